"""An audience journey over a whole segment, on the real dev server with worker
processes: every member enters exactly once although a worker is killed mid-run;
holdouts are exactly the users the hash puts there, caps suppress those already
contacted, and members who joined after the run's moment wait for the next run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.api import create_app
from orchestrator.deploy import deploy_workspace
from orchestrator.services import build_services
from orchestrator.settings import Settings
from orchestrator.stack.servers import serving
from orchestrator.workspace import load_workspace
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually, terminate_unfinished
from tests.support.workspace import REACH_EVERYONE, SERVER_KEY, WRITE_KEY, write_workspace
from workflows.assignment import in_holdout

BIN = Path(sys.executable).parent
MEMBERS = int(os.environ.get("AUDIENCE_MEMBERS", "10000"))
CONTACTED = 300  # already got a promotion today: the cap stops the announcement
POLICY = REACH_EVERYONE + (
    "caps:\n  - {name: one_a_day, max: 1, window: 1d, category: promotional}\non_cap: suppress\n"
)
SEGMENTS = "segments:\n  pro:\n    when: user.plan == 'pro'\n"


def announcement(at: datetime) -> str:
    return f"""
journey: announce
name: Announcement
category: promotional
trigger:
  audience:
    segment: pro
    schedule: {{at: "{at.isoformat()}"}}
    entry_rate: 2000/s
holdout: 10
start: tell
steps:
  tell:
    send: {{channel: in_app, template: hello}}
    next: done
  done:
    exit: {{}}
"""


async def test_every_member_enters_once_across_a_worker_kill(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    root = write_workspace(
        tmp_path / "ws", receiver_url=receiver.url, journeys={"announce": announcement(run_at)},
        policy=POLICY, stored_only=("in_app",), files={"segments.yaml": SEGMENTS},
    )  # fmt: skip
    workspace = load_workspace(root)
    await deploy_workspace(engine, workspace)
    queue = f"audience-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=postgres_url, task_queue=queue, workspace=root)
    client = dev_server.client
    services = build_services(settings, workspace=workspace, engine=engine, client=client)
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "ORCHESTRATOR_WORKSPACE": str(root),
        "ORCHESTRATOR_TASK_QUEUE": queue,
    }
    users = [f"m{i:05d}" for i in range(MEMBERS)]
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with serving(create_app(services, sweep=False)) as api, httpx.AsyncClient() as http:
            for start in range(0, MEMBERS, 500):
                batch = [{"type": "identify", "userId": u, "traits": {"plan": "pro"}}
                         for u in users[start : start + 500]]  # fmt: skip
                response = await http.post(f"{api}/v1/batch", json={"batch": batch},
                                           auth=(WRITE_KEY, ""), timeout=120)  # fmt: skip
                assert response.status_code == 200, response.text
            for user in users[:CONTACTED]:
                asked = await http.post(
                    f"{api}/v1/arbitrate",
                    headers={"authorization": f"Bearer {SERVER_KEY}"},
                    json={"user_id": user, "idempotency_key": "earlier-promo",
                          "channels": ["in_app"], "category": "promotional"},
                )  # fmt: skip
                assert asked.json()["action"] == "send"
            await asyncio.sleep(max(0.0, (run_at - datetime.now(UTC)).total_seconds()))
            # Joined after the run's moment: not in this run.
            late = {"type": "identify", "userId": "late", "traits": {"plan": "pro"}}
            await http.post(f"{api}/v1/batch", json={"batch": [late]}, auth=(WRITE_KEY, ""))

            workers.append(await _worker(env))

            async def entered(at_least: int) -> bool:
                found = await rows(engine, "SELECT count(*) AS n FROM enrollments")
                return found[0]["n"] >= at_least

            await eventually(lambda: entered(MEMBERS // 3), timeout=300)
            workers[0].send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(workers[0].wait(), 10) == -signal.SIGKILL
            workers.append(await _worker(env))

            async def finished() -> bool:
                run = await rows(engine, "SELECT finished_at FROM audience_runs")
                return bool(run and run[0]["finished_at"])

            await eventually(finished, timeout=900)
            await eventually(_all_ended(engine), timeout=600)
    finally:
        for process in workers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        await terminate_unfinished(client, engine)

    [run] = await rows(engine, "SELECT members, entered FROM audience_runs")
    assert run == {"members": MEMBERS, "entered": MEMBERS}
    enrolled = await rows(engine, "SELECT user_id, status FROM enrollments")
    assert sorted(r["user_id"] for r in enrolled) == users  # each member once, `late` not
    held = {r["user_id"] for r in enrolled if r["status"] == "holdout"}
    assert held == {u for u in users if in_holdout("announce", u, 10)}
    assert 0.08 * MEMBERS < len(held) < 0.12 * MEMBERS
    sent = await rows(engine, "SELECT user_id, count(*) AS n FROM messages GROUP BY user_id")
    assert all(r["n"] == 1 for r in sent)
    expected = {u for u in users[CONTACTED:] if u not in held}
    assert {r["user_id"] for r in sent} == expected
    capped = await rows(
        engine,
        "SELECT count(DISTINCT user_id) AS n FROM arbitration_decisions "
        "WHERE journey = 'announce' AND action = 'suppress'",
    )
    assert capped == [{"n": len([u for u in users[:CONTACTED] if u not in held])}]


async def _worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), "worker", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _all_ended(engine: AsyncEngine):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        found = await rows(engine, "SELECT count(*) AS n FROM enrollments WHERE status = 'active'")
        return found[0]["n"] == 0

    return check
