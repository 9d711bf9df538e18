"""One-click unsubscribe links (RFC 8058): signed, per user, channel and category.

A link is `{base_url}/v1/unsubscribe/{token}`; the token carries who and what, and an
HMAC-SHA256 under the workspace's link secret, so nobody can unsubscribe someone else
by editing it. Links do not expire: mail is read months after it is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from channels.signing import secret_key


class InvalidLink(Exception):
    """The token was not made by us, or was altered."""


@dataclass(frozen=True)
class Unsubscribe:
    user_id: str
    channel: str
    category: str
    message_id: str


class UnsubscribeLinks:
    def __init__(self, *, base_url: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = secret_key(secret)

    def url(self, what: Unsubscribe) -> str:
        return f"{self.base_url}/v1/unsubscribe/{self.token(what)}"

    def token(self, what: Unsubscribe) -> str:
        payload = json.dumps(
            [what.user_id, what.channel, what.category, what.message_id], separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(self, token: str) -> Unsubscribe:
        """The unsubscribe a token stands for; raises InvalidLink."""
        encoded, _, mac = token.partition(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(mac)
        except ValueError:
            raise InvalidLink("the link is malformed") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise InvalidLink("the link's signature does not match")
        # Signed by us, so well formed, unless the secret leaked: check the shape anyway.
        try:
            parts = json.loads(payload)
        except ValueError:
            raise InvalidLink("the link is malformed") from None
        if not (
            isinstance(parts, list)
            and len(parts) == 4
            and all(isinstance(p, str) and p and "\x00" not in p for p in parts)
        ):
            raise InvalidLink("the link is malformed")
        user_id, channel, category, message_id = parts
        return Unsubscribe(user_id, channel, category, message_id)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"unsubscribe." + payload, hashlib.sha256).digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text:
        raise ValueError("empty")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
