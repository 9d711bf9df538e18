"""Database connections and migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for `postgresql+asyncpg://` URLs (plain `postgresql://` is accepted)."""
    # No pre-ping: it costs a round trip per checkout; a dropped connection surfaces as
    # an error that the activity or the client retries, and connections are recycled.
    return create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
    )


def async_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def migrate_sync(url: str) -> None:
    """Bring the schema up to date (safe to run on every start)."""
    command.upgrade(alembic_config(url), "head")


async def migrate(url: str) -> None:
    # Alembic's env.py runs its own event loop, so it goes to a thread.
    await asyncio.to_thread(migrate_sync, url)
