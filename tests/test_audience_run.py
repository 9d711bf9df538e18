"""Audience journeys: every member of a segment entered at the run's moment.

On the real dev server with worker processes, 10,000 members each enter exactly once
although a worker is killed mid-run; on the time-skipping server, a daily run goes
through the holdout and the contact policy's caps like any journey, and runs again
the next day."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from orchestrator.api import create_app
from orchestrator.deploy import deploy_workspace
from orchestrator.segments.upkeep import start_upkeep
from orchestrator.stack.servers import serving
from orchestrator.workspace import load_workspace
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack, eventually, worker_processes
from tests.support.workspace import REACH_EVERYONE, WRITE_KEY, write_workspace
from workflows.assignment import in_holdout

MEMBERS = 10_000
SEGMENTS = "segments:\n  pro:\n    when: user.plan == 'pro'\n"


def audience_journey(schedule: str, steps: str, *, re_entry: str = "never") -> str:
    return f"""
journey: announce
name: Announcement
category: promotional
trigger:
  audience:
    segment: pro
    schedule: {schedule}
    entry_rate: 2000/s
re_entry: {re_entry}
holdout: 10
start: first
steps:
{steps}"""


async def _identify(post: object, users: list[str]) -> None:
    for start in range(0, len(users), 500):
        batch = [{"type": "identify", "userId": u, "traits": {"plan": "pro"}}
                 for u in users[start : start + 500]]  # fmt: skip
        response = await post("/v1/batch", {"batch": batch})  # type: ignore[operator]
        assert response.status_code == 200, response.text


@pytest.mark.timeout(900)
async def test_every_member_enters_once_across_a_worker_kill(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={},
                           files={"segments.yaml": SEGMENTS})  # fmt: skip
    client = dev_server.client
    processes = await worker_processes(
        root, engine=engine, postgres_url=postgres_url, client=client, prefix="audience"
    )
    services = processes.services
    users = [f"m{i:05d}" for i in range(MEMBERS)]
    held = {u for u in users if in_holdout("announce", u, 10)}
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with serving(create_app(services, sweep=False)) as api, httpx.AsyncClient() as http:

            async def post(path: str, body: object) -> httpx.Response:
                return await http.post(f"{api}{path}", json=body, auth=(WRITE_KEY, ""),
                                       timeout=120)  # fmt: skip

            await _identify(post, users)
            # The announcement goes to the segment as it is a second from now. Entering is
            # what is tested: the journey only waits (the daily run's test sends).
            run_at = datetime.now(UTC) + timedelta(seconds=1)
            journey = audience_journey(f'{{at: "{run_at.isoformat()}"}}', WAIT)
            (root / "journeys" / "announce.yaml").write_text(journey)
            await deploy_workspace(engine, load_workspace(root))
            await asyncio.sleep(max(0.0, (run_at - datetime.now(UTC)).total_seconds()))
            await _identify(post, ["late"])  # joined after the run's moment: not in it

            workers.append(await processes.start(quiet=True))

            async def entered(at_least: int) -> bool:
                found = await rows(engine, "SELECT count(*) AS n FROM enrollments")
                return found[0]["n"] >= at_least

            await eventually(lambda: entered(MEMBERS // 3), timeout=300)
            workers[0].send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(workers[0].wait(), 10) == -signal.SIGKILL
            workers.append(await processes.start(quiet=True))

            async def finished() -> bool:
                run = await rows(engine, "SELECT finished_at FROM audience_runs")
                return bool(run and run[0]["finished_at"])

            await eventually(finished, timeout=600)
            await eventually(_all_waiting(client, MEMBERS - len(held)), timeout=300)
    finally:
        for process in workers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        # The waiting journeys stay on the dev server, on a queue nobody polls again.

    [run] = await rows(engine, "SELECT members, entered FROM audience_runs")
    assert run == {"members": MEMBERS, "entered": MEMBERS}
    enrolled = await rows(engine, "SELECT user_id, status FROM enrollments")
    assert sorted(r["user_id"] for r in enrolled) == users  # each member once, `late` not
    assert {r["user_id"] for r in enrolled if r["status"] == "holdout"} == held
    assert 0.08 * MEMBERS < len(held) < 0.12 * MEMBERS
    assert {r["status"] for r in enrolled if r["user_id"] not in held} == {"active"}


WAIT = "  first:\n    wait: 30d\n    next: done\n  done:\n    exit: {}\n"


def _all_waiting(client: Client, expected: int):  # type: ignore[no-untyped-def]
    """Every entered member's workflow has run its first task and waits in the journey."""

    async def check() -> bool:
        query = "JourneyKey = 'announce' AND JourneyStatus = 'waiting'"
        return (await client.count_workflows(query)).count == expected

    return check


CAPPED = "caps:\n  - {name: one_a_day, max: 1, window: 12h, category: promotional}\n"
TELL = """  first:
    send: {channel: in_app, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_a_daily_audience_run_goes_through_holdouts_and_caps(
    make_stack: StackFactory, engine: AsyncEngine, time_skipping: WorkflowEnvironment
) -> None:
    now = await time_skipping.get_current_time()
    nine = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    journey = audience_journey(f'{{cron: "0 {nine.hour} * * *"}}', TELL, re_entry="always")
    stack = await make_stack(
        {"announce": journey}, policy=REACH_EVERYONE + CAPPED,
        workspace={"files": {"segments.yaml": SEGMENTS}, "stored_only": ("in_app",),
                   "config": "segments: {refresh_every: 6h}\n"},
    )  # fmt: skip
    users = [f"p{i:03d}" for i in range(200)]

    async def post(path: str, body: object) -> httpx.Response:
        return await stack.send(path, body)

    await _identify(post, users)
    contacted = users[:50]  # got a promotion today: the cap holds the announcement back
    for user in contacted:
        asked = await stack.call("POST", "/v1/arbitrate", json={
            "user_id": user, "idempotency_key": "earlier", "channels": ["in_app"],
            "category": "promotional"})  # fmt: skip
        assert asked.json()["action"] == "send"
    await start_upkeep(stack.client, stack.services.settings.task_queue, every=timedelta(hours=6))

    held = {u for u in users if in_holdout("announce", u, 10)}
    await _run_finishes(stack, engine, runs=1)
    first = await _outcomes(engine)
    assert first["entered"] == set(users)
    assert first["held"] == held
    assert first["sent"] == set(users) - held - set(contacted)
    assert first["capped"] == set(contacted) - held

    # A day later the cap's 12 hours have passed: the next run reaches everyone it may.
    await _run_finishes(stack, engine, runs=2)
    [second] = await rows(engine, "SELECT members, entered FROM audience_runs WHERE id = 2")
    assert second == {"members": 200, "entered": 200}
    sent = await rows(engine, "SELECT user_id, count(*) AS n FROM messages GROUP BY user_id")
    by_user = {r["user_id"]: r["n"] for r in sent}
    assert by_user == {u: 1 if u in contacted else 2 for u in users if u not in held}


async def _run_finishes(stack: Stack, engine: AsyncEngine, *, runs: int) -> None:
    async def done() -> bool:
        found = await rows(engine, "SELECT count(*) AS n FROM audience_runs "
                           "WHERE finished_at IS NOT NULL")  # fmt: skip
        active = await rows(engine, "SELECT count(*) AS n FROM enrollments WHERE status = 'active'")
        return found[0]["n"] >= runs and active[0]["n"] == 0

    await eventually(done, skip=stack.skip, timeout=120)


async def _outcomes(engine: AsyncEngine) -> dict[str, set[str]]:
    enrolled = await rows(engine, "SELECT user_id, status FROM enrollments")
    sent = await rows(engine, "SELECT user_id FROM messages")
    capped = await rows(
        engine,
        "SELECT user_id FROM arbitration_decisions WHERE journey = 'announce' "
        "AND action = 'suppress' AND reason LIKE '%one_a_day%'",
    )
    return {
        "entered": {r["user_id"] for r in enrolled},
        "held": {r["user_id"] for r in enrolled if r["status"] == "holdout"},
        "sent": {r["user_id"] for r in sent},
        "capped": {r["user_id"] for r in capped},
    }
