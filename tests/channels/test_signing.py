"""Standard Webhooks signing, checked against the reference library."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from channels.signing import SignatureError, secret_key, sign, verify
from tests.support.workspace import SECRETS

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OLD, NEW = SECRETS["email"], SECRETS["push"]


def test_the_reference_library_accepts_our_signature() -> None:
    body = b'{"hello":"world"}'
    headers = sign([NEW], msg_id="msg_1", body=body, now=datetime.now(UTC))
    assert Webhook(NEW).verify(body, headers) == {"hello": "world"}


def test_rotation_signs_with_both_secrets() -> None:
    headers = sign([NEW, OLD], msg_id="msg_2", body=b"{}", now=NOW)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):
        assert verify([secret], headers=headers, body=b"{}", now=NOW) == "msg_2"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": None}, "missing"),
        ({"webhook-timestamp": "soon"}, "not an integer"),
        ({"webhook-timestamp": "1" + "0" * 400}, "outside the tolerance"),
        ({"webhook-id": "w" * 3000}, "longer than 200"),
        ({"webhook-timestamp": "-" + "9" * 400}, "outside the tolerance"),
        ({"webhook-id": "msg_other"}, "no signature matches"),
    ],
)
def test_tampered_requests_fail(change: dict[str, str | None], reason: str) -> None:
    headers = sign([NEW], msg_id="msg_3", body=b"{}", now=NOW)
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    with pytest.raises(SignatureError, match=reason):
        verify([NEW], headers=headers, body=b"{}", now=NOW)


def test_body_changes_and_stale_timestamps_fail() -> None:
    headers = sign([NEW], msg_id="msg_4", body=b"{}", now=NOW)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([NEW], headers=headers, body=b'{"x":1}', now=NOW)
    with pytest.raises(SignatureError, match="tolerance"):
        verify([NEW], headers=headers, body=b"{}", now=NOW + timedelta(minutes=6))
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([OLD], headers=headers, body=b"{}", now=NOW)


@pytest.mark.parametrize("secret", ["secret", "whsec_!!!", "whsec_c2hvcnQ="])
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        secret_key(secret)
