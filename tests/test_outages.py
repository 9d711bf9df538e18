"""Outages answered honestly: Postgres away is a 503 with Retry-After and nothing half
stored; Temporal away still stores events (and answers at once), and the journeys run
when it is back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.database import create_engine, migrate
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.stack.processes import free_port
from orchestrator.stack.temporal import TemporalDevServer
from orchestrator.temporal import connect
from tests.support.db import count, rows
from tests.support.receiver import Receiver
from tests.support.stack import running_stack
from tests.support.workspace import write_workspace

NOTE = """
journey: note
name: Note
category: service
trigger: {event: Signed Up}
start: note
steps:
  note:
    send: {channel: in_app, template: hello}
    next: done
  done:
    exit: {}
"""


def signed_up(user: str) -> dict[str, str]:
    return {"userId": user, "event": "Signed Up", "messageId": f"{user}-signed-up"}


async def test_postgres_away_answers_503_and_the_retry_is_stored_once(
    tmp_path: Path, time_skipping: WorkflowEnvironment, receiver: Receiver
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", durable=False)
    url = await asyncio.to_thread(postgres.start)
    engine = create_engine(url)
    try:
        await migrate(url)
        root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={"note": NOTE})
        async with running_stack(
            client=time_skipping.client, engine=engine, database_url=url, workspace=root
        ) as stack:
            await stack.identify("ada", {"first_name": "Ada"})
            await asyncio.to_thread(postgres.stop)

            down = await stack.send("/v1/track", signed_up("ada"))
            assert down.status_code == 503
            assert int(down.headers["retry-after"]) > 0
            assert "database" in down.json()["error"]
            read = await stack.call("GET", "/v1/users/ada/journeys")
            assert read.status_code == 503
            assert (await stack.http.get(f"{stack.api_url}/healthz")).status_code == 200
            ready = await stack.http.get(f"{stack.api_url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgres"] != "ok"
            assert ready.json()["checks"]["temporal"] == "ok"

            await asyncio.to_thread(postgres.start)
            # the client sends the same request again, as Segment's libraries do after a 503
            statuses = []
            while not statuses or statuses[-1] != 200:
                statuses.append((await stack.send("/v1/track", signed_up("ada"))).status_code)
                assert len(statuses) < 50, statuses
            assert set(statuses[:-1]) <= {503}
            await stack.send("/v1/track", signed_up("ada"))  # and once more: a duplicate
            await stack.result("note", "ada")
            assert await count(engine, "events") == 2  # the identify and one Signed Up
            assert len(receiver.at("/in_app")) == 1
    finally:
        await engine.dispose()
        await asyncio.to_thread(postgres.stop)


async def test_temporal_away_events_are_stored_and_routed_when_it_is_back(
    tmp_path: Path, engine: AsyncEngine, postgres_url: str, receiver: Receiver
) -> None:
    temporal = TemporalDevServer(state_dir=tmp_path / "temporal", port=free_port(),
                                 ui_port=free_port())  # fmt: skip
    temporal.start()
    try:
        await temporal.wait_ready()
        client = await connect(temporal.address)
        root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={"note": NOTE})
        async with running_stack(
            client=client,
            engine=engine,
            database_url=postgres_url,
            workspace=root,
            route_within=0.05,  # what production does
            sweep_after=1.0,
        ) as stack:
            await asyncio.to_thread(temporal.stop)
            users = [f"user-{uuid.uuid4().hex[:6]}" for _ in range(20)]
            for user in users:
                response = await stack.send("/v1/track", signed_up(user))
                assert response.status_code == 200, response.text
            unrouted = await rows(
                engine, "SELECT count(*) AS n FROM events WHERE routed_at IS NULL"
            )
            assert unrouted == [{"n": 20}]
            assert len(receiver.at("/in_app")) == 0

            await asyncio.to_thread(temporal.start)
            await receiver.wait_for(lambda _: len(receiver.at("/in_app")) == 20, timeout=120)
            for user in users:
                assert (await stack.result("note", user)).status == "completed"
            assert await rows(engine, "SELECT 1 FROM events WHERE routed_at IS NULL") == []
    finally:
        await asyncio.to_thread(temporal.stop)
