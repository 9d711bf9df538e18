"""The installation id: one per database, made by the migration, read once per process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.database import create_engine, migrate
from orchestrator.enrollment import Installation
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.workflows.test_delivery import ONE_SEND
from tests.workflows.test_message_ids import started_with, stored_installation_id

NewDatabase = Callable[[], Awaitable[AsyncEngine]]


@pytest.fixture
async def new_database(postgres_url: str) -> AsyncIterator[NewDatabase]:
    """Freshly migrated databases on the test server, dropped afterwards."""
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    names: list[str] = []
    async with AsyncExitStack() as exits:

        async def make() -> AsyncEngine:
            name = f"installation_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(admin)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            names.append(name)
            url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
            await migrate(url)
            engine = create_engine(url)
            exits.push_async_callback(engine.dispose)
            return engine

        yield make
    conn = await asyncpg.connect(admin)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_every_new_database_gets_its_own_installation_id(
    new_database: NewDatabase,
) -> None:
    first, second = await new_database(), await new_database()
    [one] = await rows(first, "SELECT id FROM installation")
    [other] = await rows(second, "SELECT id FROM installation")
    assert isinstance(one["id"], uuid.UUID)
    assert one["id"] != other["id"]
    assert await Installation(first).id() == one["id"]
    # one row, ever
    for insert in ("INSERT INTO installation DEFAULT VALUES",
                   "INSERT INTO installation (singleton) VALUES (false)"):  # fmt: skip
        with pytest.raises(IntegrityError):
            async with first.begin() as conn:
                await conn.execute(text(insert))
    assert await rows(first, "SELECT id FROM installation") == [one]


async def test_the_id_is_read_once_and_kept(engine: AsyncEngine) -> None:
    # The test database was emptied, as a new install's would be: a new id is stored.
    assert await rows(engine, "SELECT id FROM installation") == []
    installation = Installation(engine)
    made = await installation.id()
    assert await stored_installation_id(engine) == made
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE installation SET id = gen_random_uuid()"))
    assert await installation.id() == made  # kept by this process
    assert await Installation(engine).id() == await stored_installation_id(engine) != made


async def test_journeys_started_by_one_process_share_its_installation_id(
    make_stack: StackFactory,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    first = await stored_installation_id(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE installation SET id = gen_random_uuid()"))
    await stack.track("u2", "Signed Up")
    # read once by the process that starts journeys, not at every start
    assert (await started_with(stack, "once", "u1")).installation_id == first
    assert (await started_with(stack, "once", "u2")).installation_id == first
