"""What a journey costs Temporal: history events and billable actions per entered user
and per message, for the example journeys.

The example workspace (`examples/retail`) runs on Temporal's time-skipping server with
its API, worker and webhook sink in this process and an embedded Postgres. Users enter
the welcome series (Signed Up), cart abandonment (Cart Abandoned over 20) and win-back
(an order 100 days ago puts them in the `lapsed` segment); each journey is counted
twice: when every user has come to rest at its first durable wait, and after 15 days
have been skipped. (The weekly newsletter's audience runs on a Temporal schedule, which
the time-skipping server does not have: not counted.)

Billable actions are counted from each workflow's history by Temporal Cloud's rules
(https://docs.temporal.io/cloud/actions): a start (signal-with-start is one action,
its signal included), each later signal, each activity scheduled (and each retry), each
search-attribute upsert, each timer, and per workflow task the markers it recorded
(local activities, patches) as one.

    PYTHONPATH=$PWD .venv/bin/python -m bench.temporal_cost [--users 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from orchestrator.api import create_app
from orchestrator.database import create_engine, migrate
from orchestrator.deploy import deploy_workspace
from orchestrator.enrollment import workflow_of
from orchestrator.services import build_services
from orchestrator.settings import Settings
from orchestrator.stack.dev import SINK_URL
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.stack.servers import serving
from orchestrator.stack.sink import create_sink
from orchestrator.temporal import register_search_attributes
from orchestrator.worker import running_worker
from orchestrator.workspace import load_workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retail"
BIN = Path(sys.executable).parent
WRITE_KEY = "wk_dev_backend_c04b6d"  # the example's server-side source
MARKERS = EventType.EVENT_TYPE_MARKER_RECORDED
Histories = dict[str, tuple[str, list[HistoryEvent]]]


def actions(events: Iterable[HistoryEvent]) -> Counter[str]:
    """A workflow run's billable actions by kind."""
    found: Counter[str] = Counter()
    marked_task = False
    # signal-with-start's signal is recorded before the first workflow task starts, and
    # is part of the start's action
    started_task = False
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            found["start"] += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started_task = True
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and started_task:
            found["signal"] += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            found["activity"] += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempt = event.activity_task_started_event_attributes.attempt
            found["activity retry"] += max(0, attempt - 1)
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            found["search attributes"] += 1
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            found["timer"] += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            marked_task = False
        elif kind == MARKERS and not marked_task:
            found["markers"] += 1  # all of one workflow task's markers: one action
            marked_task = True
    return +found


async def journeys(engine: AsyncEngine) -> dict[str, str]:
    """Every entered journey's workflow id and journey (the enrollments table: the
    time-skipping server has no visibility queries)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT journey_key, user_id, instance, workflow_id FROM enrollments"
                " WHERE status <> 'holdout'"
            )
        )
        return {workflow_of(row): row.journey_key for row in rows}


async def histories(
    client: Client, ids: dict[str, str]
) -> dict[str, tuple[str, list[HistoryEvent]]]:
    """Each workflow's journey and history (its current run)."""
    found = {}
    for workflow_id, journey in ids.items():
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        found[workflow_id] = (journey, list(history.events))
    return found


async def sent(engine: AsyncEngine) -> Counter[str]:
    """Messages that went out, by journey (a deferral asked again is not a message)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT journey_key, count(*) FROM messages"
                " WHERE status IN ('sent', 'delivered') GROUP BY journey_key"
            )
        )
        return Counter({journey: n for journey, n in rows})


def report(title: str, found: Histories, messages: Counter[str]) -> None:
    per_journey: dict[str, list[tuple[int, Counter[str]]]] = defaultdict(list)
    for journey, events in found.values():
        per_journey[journey].append((len(events), actions(events)))
    print(f"\n{title}")
    print("| journey | users | history events per user | actions per user | messages per user "
          "| actions per message | actions by kind (per user) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for journey, runs in sorted(per_journey.items()):
        users = len(runs)
        events = sum(r[0] for r in runs) / users
        kinds: Counter[str] = Counter()
        for r in runs:
            kinds.update(r[1])
        total = sum(kinds.values()) / users
        per_user = messages[journey] / users
        per_message = f"{total / per_user:.1f}" if per_user else "-"
        detail = ", ".join(f"{k} {v / users:g}" for k, v in sorted(kinds.items()))
        print(f"| {journey} | {users} | {events:.1f} | {total:.1f} | {per_user:.1f} "
              f"| {per_message} | {detail} |")  # fmt: skip


async def at_rest(client: Client, engine: AsyncEngine, expected: int) -> dict[str, str]:
    """Until `expected` journeys were entered and every history has stood still for a
    second with no activity in flight; returns the journeys' workflows."""
    before: dict[str, int] = {}
    for _ in range(300):
        await asyncio.sleep(1)
        if await entered(engine) < expected:
            continue
        found = await journeys(engine)
        now: dict[str, int] = {}
        for workflow_id in found:
            try:
                handle = client.get_workflow_handle(workflow_id)
                described = await handle.describe()
            except RPCError:  # entered, not started yet
                break
            if described.status == WorkflowExecutionStatus.RUNNING and (
                described.raw_description.pending_activities
            ):
                break
            now[workflow_id] = described.history_length
        if len(now) == len(found) and now == before:
            return found
        before = now
    raise RuntimeError("the journeys did not come to rest")


async def traffic(api_url: str, users: int) -> int:
    """Users entering the three event-triggered journeys; returns how many entries."""
    batch = []
    now = datetime.now(UTC)
    for n in range(users):
        user = f"bench-{n}"
        traits = {
            "email": f"{user}@example.com",
            "first_name": f"U{n}",
            "timezone": "Europe/London",
        }
        batch += [
            {"type": "identify", "userId": user, "traits": traits},
            {"type": "track", "userId": user, "event": "Signed Up"},
            {"type": "track", "userId": user, "event": "Cart Abandoned",
             "properties": {"cart_id": f"c{n}", "cart_value": 50}},
            {"type": "track", "userId": f"lapsed-{n}", "event": "Order Completed",
             "timestamp": (now - timedelta(days=100)).isoformat(),
             "properties": {"order_id": f"o{n}", "revenue": 30,
                            "products": [{"product_id": "NW-1001", "quantity": 1}]}},
            {"type": "identify", "userId": f"lapsed-{n}", "traits": {"email": f"l{n}@example.com"}},
        ]  # fmt: skip
    async with httpx.AsyncClient(timeout=60, auth=(WRITE_KEY, "")) as http:
        response = await http.post(f"{api_url}/v1/batch", json={"batch": batch})
        response.raise_for_status()
    return users * 3


async def entered(engine: AsyncEngine) -> int:
    """Entries, held-out ones included (they start no workflow)."""
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM enrollments")) or 0)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        url = await asyncio.to_thread(postgres.start)
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=pydantic_data_converter,
            test_server_existing_path=str(BIN / "temporal-test-server"),
        )
        try:
            await migrate(url)
            await register_search_attributes(env.client, "default")
            sink_port = 8750  # the win-back journey's CRM webhook names it
            os.environ[SINK_URL] = f"http://127.0.0.1:{sink_port}"
            workspace = load_workspace(EXAMPLE)
            engine = create_engine(url)
            await deploy_workspace(engine, workspace)
            settings = Settings(database_url=url, task_queue="bench-cost", workspace=EXAMPLE)
            services = build_services(settings, workspace=workspace, engine=engine,
                                      client=env.client)  # fmt: skip
            async with (
                serving(create_app(services, sweep=False)) as api_url,
                serving(create_sink(workspace.config, receipts_to=api_url), port=sink_port),
                running_worker(env.client, workspace=workspace, engine=engine,
                               task_queue=settings.task_queue),
            ):  # fmt: skip
                expected = await traffic(api_url, args.users)
                ids = await at_rest(env.client, engine, expected)
                report("At rest (each user at the first durable wait, or ended):",
                       await histories(env.client, ids), await sent(engine))  # fmt: skip
                await env.sleep(timedelta(days=15))
                ids = await at_rest(env.client, engine, expected)
                report("After 15 days (journeys ended or waiting; the run as it stands):",
                       await histories(env.client, ids), await sent(engine))  # fmt: skip
            await engine.dispose()
        finally:
            await env.shutdown()
            await asyncio.to_thread(postgres.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
