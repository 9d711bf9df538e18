"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign and verify.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, signed with
HMAC-SHA256 under the secret's key; secrets are written `whsec_<base64 key>`. A
request may carry several signatures separated by spaces, so a receiver can accept
an old and a new secret during rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

SECRET_PREFIX = "whsec_"
TOLERANCE = timedelta(minutes=5)


class SignatureError(Exception):
    """The request is unsigned, wrongly signed, or too old or too new to trust."""


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret; raises ValueError when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a signing secret starts with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("a signing secret starts with 'whsec_' followed by base64") from None
    if len(key) < 24:
        raise ValueError("a signing secret needs at least 24 bytes of key material")
    return key


# Ids are kept (receipts refuse a replayed one), so they are bounded.
MAX_ID_LENGTH = 200


def signature(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secrets: Sequence[str], *, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers, with one signature per secret."""
    timestamp = int(now.timestamp())
    signatures = " ".join(
        signature(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }


def verify(
    secrets: Sequence[str],
    *,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    tolerance: timedelta = TOLERANCE,
) -> str:
    """Check a signed request against any of the secrets; return its webhook-id."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not stamp or not given:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if len(msg_id) > MAX_ID_LENGTH:
        raise SignatureError(f"webhook-id is longer than {MAX_ID_LENGTH} characters")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    # In whole seconds, as ints: a 400-digit timestamp must not overflow a float.
    if abs(int(now.timestamp()) - timestamp) > tolerance.total_seconds():
        raise SignatureError("webhook-timestamp is outside the tolerance")
    offered = {part for part in given.split(" ") if part.startswith("v1,")}
    for secret in secrets:
        expected = signature(secret, msg_id=msg_id, timestamp=timestamp, body=body)
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return msg_id
    raise SignatureError("no signature matches")
