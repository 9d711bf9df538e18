"""Receipts from the channel systems, and one-click unsubscribes, flowing back in.

A receipt updates its message (status and the first time each thing happened),
becomes an event journeys can wait for and branch on, and, through ingestion,
updates suppression: a hard bounce, a complaint or an unsubscribe stops further
sends on that channel (an unsubscribe link only for the message's category).

    delivered     message_delivered      status delivered
    opened        message_opened         opened_at (delivered too)
    clicked       message_clicked        clicked_at (opened and delivered too)
    bounced       message_bounced        status bounced; hard bounces suppress
    complained    message_complained     suppresses the channel
    unsubscribed  unsubscribed           suppresses the channel (or data.category)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.unsubscribe import Unsubscribe
from orchestrator.inbox import mark
from orchestrator.json_checks import Instant
from orchestrator.services import Services
from orchestrator.tables import messages, receipts
from orchestrator.tracking import Incoming

Kind = Literal["delivered", "opened", "clicked", "bounced", "complained", "unsubscribed"]

EVENTS: dict[str, str] = {
    "delivered": "message_delivered",
    "opened": "message_opened",
    "clicked": "message_clicked",
    "bounced": "message_bounced",
    "complained": "message_complained",
    "unsubscribed": "unsubscribed",
}


class ReceiptData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str = Field(min_length=1, description="Our message id (the webhook-id we sent)")
    occurred_at: Instant | None = Field(default=None, description="Defaults to the timestamp")
    bounce_type: Literal["hard", "soft"] | None = None
    url: str | None = Field(default=None, description="What was clicked")
    item_id: str | None = Field(default=None, description="The recommended item clicked")
    category: str | None = Field(default=None, description="An unsubscribe from one category")
    reason: str | None = Field(default=None, max_length=2000)


class ReceiptBody(BaseModel):
    """`POST /v1/webhooks/receipts/{channel}`, Standard Webhooks-signed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Kind
    timestamp: Instant
    data: ReceiptData

    @model_validator(mode="after")
    def _bounce_type(self) -> ReceiptBody:
        if self.type == "bounced" and self.data.bounce_type is None:
            raise ValueError("a bounced receipt needs data.bounce_type: hard or soft")
        return self


class UnknownMessage(Exception):
    """The receipt names a message this channel never sent."""


class Replayed(Exception):
    """This webhook-id was received before."""


def _message_update(kind: str, at: datetime, data: ReceiptData) -> dict[str, Any]:
    c = messages.c
    first = {f"{name}_at": func.coalesce(getattr(c, f"{name}_at"), at) for name in _implied(kind)}
    if kind == "bounced":
        return {**first, "status": "bounced", "bounce_type": data.bounce_type}
    if "delivered" in _implied(kind):
        delivered = case((c.status.in_(("sending", "sent")), "delivered"), else_=c.status)
        return {**first, "status": delivered}
    return first


def _implied(kind: str) -> tuple[str, ...]:
    """A click means it was opened, an open that it was delivered."""
    return {
        "clicked": ("clicked", "opened", "delivered"),
        "opened": ("opened", "delivered"),
    }.get(kind, (kind,))


async def record_receipt(
    services: Services, *, channel: str, webhook_id: str, body: ReceiptBody
) -> None:
    """Apply one receipt; raise UnknownMessage or Replayed and change nothing."""
    now = services.clock()
    # When it happened, as the channel system says; never later than now (a channel
    # system's clock is no better than a device's, see `tracking.MAX_AHEAD`).
    at = min(body.data.occurred_at or body.timestamp, now)

    async def apply(conn: AsyncConnection) -> list[Incoming]:
        row = (
            await conn.execute(
                select(messages).where(messages.c.id == body.data.message_id).with_for_update()
            )
        ).one_or_none()
        if row is None or row.channel != channel:
            raise UnknownMessage(f"no {channel} message {body.data.message_id!r}")
        stored = await conn.scalar(
            insert(receipts)
            .values(
                channel=channel,
                webhook_id=webhook_id,
                message_id=row.id,
                kind=body.type,
                payload=body.model_dump(mode="json"),
                received_at=now,
            )
            .on_conflict_do_nothing()
            .returning(receipts.c.webhook_id)
        )
        if stored is None:
            raise Replayed(f"webhook-id {webhook_id!r} was received before")
        await conn.execute(
            update(messages)
            .where(messages.c.id == row.id)
            .values(_message_update(body.type, at, body.data))
        )
        props = _properties(dict(row._mapping), body)
        event_id = f"receipt:{channel}:{webhook_id}"
        return [_event(event_id, EVENTS[body.type], row.user_id, props, at)]

    await services.ingest([], source=f"receipts:{channel}", now=now, first=apply)


def _properties(message: dict[str, Any], body: ReceiptBody) -> dict[str, Any]:
    data = body.data
    props: dict[str, Any] = {
        "message_id": message["id"],
        "journey": message["journey_key"],
        "version": message["version"],
        "step": message["step"],
        "channel": message["channel"],
        "template": message["template"],
        # An unsubscribe receipt covers the channel unless it names a category.
        "category": data.category or "*" if body.type == "unsubscribed" else message["category"],
    }
    extra = {
        "bounce_type": data.bounce_type,
        "url": data.url,
        "item_id": data.item_id,
        "reason": data.reason,
    }
    props.update({k: v for k, v in extra.items() if v is not None})
    if body.type == "bounced":
        props["type"] = data.bounce_type  # what the suppression policy reads
    return props


def _event(
    event_id: str, name: str, user_id: str, properties: dict[str, Any], at: datetime
) -> Incoming:
    return Incoming(
        message_id=event_id,
        type="track",
        event=name,
        user_id=user_id,
        anonymous_id=None,
        previous_id=None,
        properties=properties,
        traits={},
        context={},
        timestamp=at,
    )


async def record_unsubscribe(services: Services, what: Unsubscribe) -> None:
    """A one-click unsubscribe: suppress the channel for the category, tell journeys.
    Clicking the same link again changes nothing."""
    now = services.clock()

    async def apply(conn: AsyncConnection) -> list[Incoming]:
        row = (
            await conn.execute(
                update(messages)
                .where(messages.c.id == what.message_id, messages.c.user_id == what.user_id)
                .values(unsubscribed_at=func.coalesce(messages.c.unsubscribed_at, now))
                .returning(messages.c.journey_key, messages.c.step, messages.c.template)
            )
        ).one_or_none()
        props: dict[str, Any] = {
            "channel": what.channel,
            "category": what.category,
            "message_id": what.message_id,
            "via": "list_unsubscribe",
        }
        if row is not None:
            props |= {"journey": row.journey_key, "step": row.step, "template": row.template}
        event_id = f"unsubscribe:{what.message_id}"
        return [_event(event_id, "unsubscribed", what.user_id, props, now)]

    await services.ingest([], source="links:unsubscribe", now=now, first=apply)


async def record_app_action(
    services: Services,
    *,
    user_id: str,
    message_id: str,
    channel: Literal["in_app", "web"],
    action: Literal["read", "dismiss"],
) -> None:
    """The app read or dismissed a stored message; reading it is its open receipt
    (`message_opened`, once). Raise UnknownMessage when the user has no such message."""
    now = services.clock()

    async def apply(conn: AsyncConnection) -> list[Incoming]:
        if not await mark(conn, user_id, message_id, action, channel=channel, now=now):
            raise UnknownMessage(f"user {user_id!r} has no {channel} message {message_id!r}")
        if action != "read":
            return []
        row = (
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(_message_update("opened", now, ReceiptData(message_id=message_id)))
                .returning(*messages.c)
            )
        ).one()
        body = ReceiptBody(type="opened", timestamp=now, data=ReceiptData(message_id=message_id))
        props = {**_properties(dict(row._mapping), body), "via": "app"}
        return [_event(f"read:{message_id}", EVENTS["opened"], user_id, props, now)]

    await services.ingest([], source=f"app:{channel}", now=now, first=apply)
