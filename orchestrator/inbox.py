"""In-app inbox and web placements: messages stored per user for apps and websites to fetch.

The inbox lists a user's unexpired, undismissed in-app messages, unread first and
newest first within each, a page at a time (a cursor continues where a page ended).
A placement shows the newest unexpired, undismissed web message for that placement.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from channels.base import Rendered
from orchestrator.json_checks import problem, sane_instant
from orchestrator.tables import user_messages
from rules.store import driver_connection

_SHOWN = ("title", "body", "image", "cta_label", "cta_url", "url")
_PUT = """
    INSERT INTO user_messages (message_id, user_id, channel, placement, content, metadata,
        created_at, expires_at)
    VALUES ($1, $2, $3, $4, CAST($5 AS jsonb), CAST($6 AS jsonb), now(), $7)
    ON CONFLICT (message_id) DO NOTHING
"""


class PostgresMessageBox:
    """The `MessageBox` the in-app and web adapters store into."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, rendered: Rendered, *, expires_at: datetime) -> None:
        content = {k: v for k, v in rendered.content.items() if k in _SHOWN}
        async with self.engine.connect() as conn:
            # Once per message, so straight to the driver (one atomic statement).
            driver = await driver_connection(conn)
            await driver.execute(
                _PUT,
                rendered.message_id,
                rendered.user_id,
                rendered.channel,
                rendered.content.get("placement"),
                orjson.dumps(content).decode(),
                orjson.dumps(rendered.metadata).decode(),
                expires_at,
            )


class BadCursor(ValueError):
    """The paging cursor was not one we handed out."""


@dataclass(frozen=True)
class Page:
    messages: list[dict[str, Any]]
    unread: int
    next_cursor: str | None


def _shown(row: Any) -> dict[str, Any]:
    return {
        "id": row.message_id,
        **row.content,
        "read": row.read_at is not None,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "journey": row.metadata.get("journey"),
    }


def _live(user_id: str, channel: str, now: datetime) -> Any:
    c = user_messages.c
    return and_(
        c.user_id == user_id, c.channel == channel, c.dismissed_at.is_(None), c.expires_at > now
    )


async def inbox(
    conn: AsyncConnection, user_id: str, *, now: datetime, limit: int, cursor: str | None
) -> Page:
    c = user_messages.c
    is_read = c.read_at.is_not(None)
    query = (
        select(user_messages, is_read.label("is_read"))
        .where(_live(user_id, "in_app", now))
        .order_by(is_read, c.created_at.desc(), c.message_id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        was_read, created, message_id = _read_cursor(cursor)
        later = or_(
            c.created_at < created, and_(c.created_at == created, c.message_id < message_id)
        )
        after = and_(is_read == was_read, later)
        query = query.where(or_(after, is_read) if not was_read else after)
    rows = (await conn.execute(query)).all()
    unread = await conn.scalar(
        select(func.count()).where(_live(user_id, "in_app", now), c.read_at.is_(None))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    next_cursor = _cursor(last.is_read, last.created_at, last.message_id) if last else None
    return Page([_shown(r) for r in rows], int(unread or 0), next_cursor)


async def placement(
    conn: AsyncConnection, user_id: str, name: str, *, now: datetime
) -> dict[str, Any] | None:
    c = user_messages.c
    row = (
        await conn.execute(
            select(user_messages)
            .where(_live(user_id, "web", now), c.placement == name)
            .order_by(c.created_at.desc(), c.message_id.desc())
            .limit(1)
        )
    ).one_or_none()
    return _shown(row) if row else None


async def mark(
    conn: AsyncConnection,
    user_id: str,
    message_id: str,
    action: Literal["read", "dismiss"],
    *,
    channel: str,
    now: datetime,
) -> bool:
    """Mark a message read or dismissed (the first time counts); False if there is no
    such message for this user on this channel."""
    c = user_messages.c
    column = c.read_at if action == "read" else c.dismissed_at
    found = await conn.scalar(
        update(user_messages)
        .where(c.user_id == user_id, c.message_id == message_id, c.channel == channel)
        .values({column.key: func.coalesce(column, now)})
        .returning(c.message_id)
    )
    return found is not None


def _cursor(is_read: bool, created_at: datetime, message_id: str) -> str:
    raw = json.dumps([is_read, created_at.isoformat(), message_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[bool, datetime, str]:
    """The place a cursor names; BadCursor for anything we did not hand out (the cursor
    comes back from a client, so nothing in it is trusted)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        is_read, created, message_id = orjson.loads(raw)  # refuses lone surrogates
        if not (
            isinstance(is_read, bool)
            and isinstance(created, str)
            and isinstance(message_id, str)
            and problem(message_id) is None
        ):
            raise ValueError("malformed")
        return is_read, sane_instant(datetime.fromisoformat(created)), message_id
    except (ValueError, TypeError):  # orjson's decode error is a ValueError
        raise BadCursor("cursor is not one this API returned") from None
