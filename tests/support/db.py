"""Reading the database in assertions, and writing what a test simulates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(r._mapping) for r in result]


async def count(engine: AsyncEngine, table: str) -> int:
    [row] = await rows(engine, f"SELECT count(*) AS n FROM {table}")
    return int(row["n"])


async def enrollments(engine: AsyncEngine, journey: str) -> list[dict[str, Any]]:
    return await rows(
        engine,
        "SELECT * FROM enrollments WHERE journey_key = :j ORDER BY id",
        j=journey,
    )


async def enable_outbox(engine: AsyncEngine) -> None:
    """Facts go to the outbox, as when a relay runs."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox_state (singleton, enabled) VALUES (true, true) "
                "ON CONFLICT (singleton) DO UPDATE SET enabled = true"
            )
        )


async def insert_messages(
    engine: AsyncEngine,
    messages: list[tuple[str, str, str]],
    clicks: list[tuple[str, str, str]],
    *,
    at: datetime,
) -> None:
    """Delivered emails (id, user, content_source JSON) of journey step shop/mail sent
    at `at`, and `clicked` receipts (webhook id, message id, payload JSON) for them."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, journey_key, version, user_id, step, channel,"
                " template, status, content_source, created_at)"
                " SELECT id, 'shop', 1, u, 'mail', 'email', 'picks', 'delivered',"
                "  CAST(s AS jsonb), :at"
                " FROM unnest(CAST(:ids AS text[]), CAST(:users AS text[]),"
                "  CAST(:sources AS text[])) AS t(id, u, s)"
            ),
            {"ids": [m[0] for m in messages], "users": [m[1] for m in messages],
             "sources": [m[2] for m in messages], "at": at},
        )  # fmt: skip
        await conn.execute(
            text(
                "INSERT INTO receipts (channel, webhook_id, message_id, kind, payload,"
                " received_at) SELECT 'email', w, m, 'clicked', CAST(p AS jsonb), :at"
                " FROM unnest(CAST(:w AS text[]), CAST(:m AS text[]), CAST(:p AS text[]))"
                "  AS t(w, m, p)"
            ),
            {"w": [r[0] for r in clicks], "m": [r[1] for r in clicks],
             "p": [r[2] for r in clicks], "at": at},
        )  # fmt: skip
