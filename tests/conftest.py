"""Real servers for the whole session: PostgreSQL, Temporal (time-skipping and dev)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator.database import create_engine, migrate
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.tables import metadata
from orchestrator.temporal import register_search_attributes
from rules.store import metadata as rules_metadata
from tests.support.receiver import Receiver, running_receiver
from tests.support.stack import Stack, running_stack
from tests.support.workspace import REACH_EVERYONE, SECRETS, write_workspace
from workflows import search

BIN = Path(sys.executable).parent


def _binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run the tests with `make test`")
    return str(path)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database: on DATABASE_URL's server if set, else embedded."""
    name = f"orchestrator_test_{uuid.uuid4().hex[:8]}"
    given = os.environ.get("DATABASE_URL")
    if given:
        admin = given.replace("postgresql+asyncpg://", "postgresql://")

        async def create() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()

        asyncio.run(create())
        url = admin.rsplit("/", 1)[0] + f"/{name}"
        asyncio.run(migrate(url))
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", durable=False)
    server.start()
    try:
        url = server.create_database(name)
        asyncio.run(migrate(url))
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def session_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture
async def engine(session_engine: AsyncEngine) -> AsyncEngine:
    """The test database, emptied before each test."""
    tables = ", ".join(t.name for m in (metadata, rules_metadata) for t in m.sorted_tables)
    async with session_engine.begin() as conn:
        # An activity cancelled mid-statement as the last test's worker stopped can leave
        # its connection holding row locks (sqlalchemy/sqlalchemy#6592): end it.
        stuck = await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state <> 'idle'"
            )
        )
        ended = stuck.all()
    if ended:
        await session_engine.dispose()  # their pooled connections are gone
    async with session_engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return session_engine


@pytest.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server, for journeys that wait days.

    One per test (it starts in about 0.1 s): time is global to the server, and work a
    test leaves behind (an activity in flight as its worker stops) can hold time still.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=_binary("temporal-test-server"),
    )
    await register_search_attributes(env.client, "default")
    yield env
    await asyncio.wait_for(env.shutdown(), 30)


@pytest.fixture(scope="session")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (the one `orchestrator dev` runs), in memory."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=_binary("temporal"),
        search_attributes=search.ALL,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local Kafka-compatible broker `orchestrator dev` runs (tansu, in memory): its
    bootstrap address. Tests name their own topics."""
    from orchestrator.stack.kafka import LocalBroker
    from orchestrator.stack.processes import free_port

    broker = LocalBroker(port=free_port(), log_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        asyncio.run(broker.wait_ready())
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver(SECRETS) as r:
        yield r


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(
    time_skipping: WorkflowEnvironment,
    engine: AsyncEngine,
    postgres_url: str,
    receiver: Receiver,
    tmp_path: Path,
) -> AsyncIterator[StackFactory]:
    """Build a running stack on the time-skipping server for a set of journeys."""
    async with contextlib.AsyncExitStack() as exits:

        async def make(
            journeys: dict[str, str],
            *,
            templates: dict[str, str] | None = None,
            env: WorkflowEnvironment | None = None,
            policy: str = REACH_EVERYONE,
            workspace: dict[str, Any] | None = None,
            **options: Any,
        ) -> Stack:
            root = write_workspace(
                tmp_path / f"ws{uuid.uuid4().hex[:6]}",
                receiver_url=receiver.url,
                journeys=journeys,
                templates=templates,
                policy=policy,
                **(workspace or {}),
            )
            env = env or time_skipping

            async def skip() -> None:
                if env.supports_time_skipping:
                    await env.sleep(timedelta(hours=1))

            return await exits.enter_async_context(
                running_stack(
                    client=env.client,
                    engine=engine,
                    database_url=postgres_url,
                    workspace=root,
                    skip=skip,
                    **options,
                )
            )

        yield make


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retail"
QUICK_JOURNEY = """
journey: quick_follow_up
name: Quick follow-up
category: service
trigger: {event: Demo Requested}
start: pause
steps:
  pause:
    wait: 2s
    next: follow_up
  follow_up:
    send: {channel: in_app, template: win_back_thanks}
    next: done
  done:
    exit: {}
"""


@pytest.fixture
def example(tmp_path: Path, receiver: Receiver) -> Path:
    """The example workspace, delivering to the test receiver instead of the dev sink,
    plus a journey with a two-second wait."""
    root = tmp_path / "retail"
    shutil.copytree(EXAMPLE, root)
    for path in (root / "orchestrator.yaml", root / "journeys" / "win_back.yaml"):
        path.write_text(path.read_text().replace("http://127.0.0.1:8750", receiver.url))
    (root / "journeys" / "quick_follow_up.yaml").write_text(QUICK_JOURNEY)
    return root
