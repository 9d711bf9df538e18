"""Receipts and unsubscribes flow back in: the message, suppression and waiting journeys.

Receipts are signed here with the reference Standard Webhooks library, as a channel
system would sign them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from tests.conftest import StackFactory
from tests.support.db import count, rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack
from tests.support.workspace import SECRETS

JOURNEY = """
journey: receipts
name: Receipts
category: promotional
trigger: {event: Signed Up}
start: mail
steps:
  mail:
    send: {channel: email, template: hello}
    next: wait
  wait:
    wait_for:
      event: EVENT
      where: event.properties.journey == 'receipts' and event.properties.step == 'mail'
      timeout: 1d
      on_event: heard
      on_timeout: done
  heard:
    branch:
      - when: event.properties.bounce_type == 'soft'
        next: soft
      - next: again
  soft:
    update_profile: {set: {soft_bounced: true}}
    next: again
  again:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def post_receipt(
    stack: Stack,
    channel: str,
    body: dict[str, Any],
    *,
    secret: str | None = None,
    webhook_id: str | None = None,
    at: datetime | None = None,
    signed: bool = True,
) -> httpx.Response:
    payload = json.dumps(body)
    headers = {"content-type": "application/json"}
    if signed:
        webhook_id = webhook_id or f"rcpt_{uuid.uuid4().hex}"
        at = at or datetime.now(UTC)
        headers |= {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret or SECRETS[channel]).sign(webhook_id, at, payload),
        }
    return await stack.http.post(
        f"{stack.api_url}/v1/webhooks/receipts/{channel}", content=payload, headers=headers
    )


def receipt(kind: str, message_id: str, **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"message_id": message_id, **data},
    }


async def first_email(stack: Stack, receiver: Receiver) -> str:
    await stack.track("u1", "Signed Up")
    await receiver.wait_for(lambda rs: any(r.path == "/email" for r in rs))
    msg_id = receiver.at("/email")[0].msg_id
    assert msg_id is not None
    return msg_id


CASES = [
    # kind, extra data, the event, the message afterwards, suppression, the later send
    ("delivered", {}, "message_delivered", ("delivered", "delivered_at"), None, "delivered"),
    ("opened", {}, "message_opened", ("delivered", "opened_at"), None, "delivered"),
    ("clicked", {"url": "https://shop.example.com/p/1", "item_id": "NW-1"}, "message_clicked",
     ("delivered", "clicked_at"), None, "delivered"),
    ("bounced", {"bounce_type": "soft", "reason": "mailbox full"}, "message_bounced",
     ("bounced", "bounced_at"), None, "delivered"),
    ("bounced", {"bounce_type": "hard", "reason": "no such user"}, "message_bounced",
     ("bounced", "bounced_at"), "bounce", "suppressed"),
    ("complained", {}, "message_complained", ("sent", "complained_at"), "complaint", "suppressed"),
    ("unsubscribed", {}, "unsubscribed", ("sent", "unsubscribed_at"), "unsubscribe",
     "suppressed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "data", "event", "message", "suppression", "later"),
    CASES,
    ids=[f"{c[0]}-{c[1].get('bounce_type', '')}".rstrip("-") for c in CASES],
)
async def test_every_receipt_kind_reaches_the_message_suppression_and_a_waiting_journey(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    kind: str,
    data: dict[str, Any],
    event: str,
    message: tuple[str, str],
    suppression: str | None,
    later: str,
) -> None:
    stack = await make_stack({"receipts": JOURNEY.replace("EVENT", event)})
    msg_id = await first_email(stack, receiver)
    response = await post_receipt(stack, "email", receipt(kind, msg_id, **data))
    assert response.status_code == 204, response.text

    result = await stack.result("receipts", "u1")
    outcomes = {
        r["step"]: r["outcome"]
        for r in await rows(engine, "SELECT step, outcome FROM enrollment_steps")
    }
    assert outcomes["wait"] == f"got {event}"  # the journey heard the receipt's event
    assert outcomes["again"].startswith(later), outcomes["again"]
    assert result.messages_sent == (2 if later == "delivered" else 1)
    assert ("soft" in outcomes) == (data.get("bounce_type") == "soft")

    status, stamped = message
    [row] = await rows(engine, f"SELECT status, {stamped} AS at FROM messages WHERE id = :id",
                       id=msg_id)  # fmt: skip
    assert row["status"] == status
    assert row["at"] is not None
    [stored] = await rows(engine, "SELECT event, properties FROM events WHERE event = :e", e=event)
    props = stored["properties"]
    assert (props["message_id"], props["journey"], props["step"]) == (msg_id, "receipts", "mail")
    for key, value in data.items():
        assert props[key] == value
    found = await rows(engine, "SELECT reason, channel FROM suppressions")
    assert found == ([{"reason": suppression, "channel": "email"}] if suppression else [])


async def test_bad_receipts_are_refused_and_change_nothing(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"receipts": JOURNEY.replace("EVENT", "message_opened")})
    msg_id = await first_email(stack, receiver)
    good = receipt("opened", msg_id)
    stale = datetime.now(UTC) - timedelta(minutes=10)
    refusals = [
        (await post_receipt(stack, "email", good, signed=False), 401, "missing webhook-id"),
        (await post_receipt(stack, "email", good, secret=SECRETS["push"]), 401, "no signature"),
        (await post_receipt(stack, "email", good, at=stale), 401, "outside the tolerance"),
        (await post_receipt(stack, "email", receipt("read", msg_id)), 400, "type"),
        (await post_receipt(stack, "email", receipt("bounced", msg_id)), 400, "bounce_type"),
        (await post_receipt(stack, "email", receipt("opened", "nope")), 404, "no email message"),
        (await post_receipt(stack, "push", receipt("opened", msg_id)), 404, "no push message"),
        (await post_receipt(stack, "fax", good, secret=SECRETS["push"]), 404, "no channel"),
    ]
    for response, status, reason in refusals:
        assert response.status_code == status, response.text
        assert reason in response.text
    assert await count(engine, "receipts") == 0
    assert await rows(engine, "SELECT 1 FROM events WHERE event LIKE 'message_%'") == []
    [row] = await rows(engine, "SELECT status, opened_at FROM messages")
    assert row == {"status": "sent", "opened_at": None}

    # a replayed receipt (the same webhook-id again, however well signed) is refused
    assert (await post_receipt(stack, "email", good, webhook_id="rcpt_1")).status_code == 204
    replay = await post_receipt(stack, "email", receipt("clicked", msg_id), webhook_id="rcpt_1")
    assert replay.status_code == 401
    assert "received before" in replay.text
    assert await count(engine, "receipts") == 1
    # (the journey heard the open and went on to send its second message)
    [row] = await rows(engine, "SELECT clicked_at FROM messages WHERE id = :id", id=msg_id)
    assert row["clicked_at"] is None


async def test_a_one_click_unsubscribe_link_suppresses_the_category(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"receipts": JOURNEY.replace("EVENT", "unsubscribed")})
    await first_email(stack, receiver)
    content = receiver.at("/email")[0].json["data"]["content"]
    assert content["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = content["headers"]["List-Unsubscribe"].strip("<>")
    path = link.removeprefix("http://127.0.0.1:8000")
    assert path.startswith("/v1/unsubscribe/")

    # opening the link asks first (mail scanners follow links); nothing changes yet
    page = await stack.http.get(f"{stack.api_url}{path}")
    assert page.status_code == 200
    assert "Stop receiving promotional email messages?" in page.text
    assert await count(engine, "suppressions") == 0

    tampered = await stack.http.post(f"{stack.api_url}{path[:-3]}xyz")
    assert tampered.status_code == 400
    assert "not valid" in tampered.text
    assert await count(engine, "suppressions") == 0

    # the mail client's one-click POST (RFC 8058), then a second click
    for _ in range(2):
        done = await stack.http.post(
            f"{stack.api_url}{path}", content=b"List-Unsubscribe=One-Click"
        )
        assert done.status_code == 200
        assert "You are unsubscribed from promotional email messages" in done.text
    found = await rows(engine, "SELECT channel, category, reason FROM suppressions")
    assert found == [{"channel": "email", "category": "promotional", "reason": "unsubscribe"}]
    assert len(await rows(engine, "SELECT 1 FROM events WHERE event = 'unsubscribed'")) == 1

    # the waiting journey heard it, and its next promotional email is not sent
    await stack.result("receipts", "u1")
    [again] = await rows(engine, "SELECT outcome FROM enrollment_steps WHERE step = 'again'")
    assert again["outcome"].startswith("suppressed")
    [row] = await rows(engine, "SELECT unsubscribed_at FROM messages WHERE step = 'mail'")
    assert row["unsubscribed_at"] is not None
