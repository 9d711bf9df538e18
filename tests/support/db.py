"""Reading the database in assertions."""

from __future__ import annotations

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
