"""Alembic environment: runs migrations over an async engine given by the caller."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orchestrator.tables import metadata
from rules.store import metadata as rules_metadata

TARGETS = [metadata, rules_metadata]


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=TARGETS)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=TARGETS,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
