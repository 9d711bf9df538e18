"""The production topology on one machine: `orchestrator api` twice and `orchestrator
worker` twice, as their own processes, against one Postgres and one Temporal. Nothing
changes with more processes: each message goes out once, caps hold exactly under
concurrent journeys, and a worker killed mid-delivery loses and doubles nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from orchestrator.doctor.temporal import check_workers
from orchestrator.settings import Settings
from orchestrator.stack.processes import free_port
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually, terminate_unfinished, worker_processes
from tests.support.workspace import REACH_EVERYONE, WRITE_KEY, write_workspace

BIN = Path(sys.executable).parent
USERS = 30  # per phase
CAP = 2  # promotional emails per user per day

SALE = """
journey: sale_{x}
name: Sale {x}
category: promotional
trigger: {{event: Sale Started}}
start: tell
steps:
  tell:
    send: {{channel: email, template: hello}}
    next: done
  done:
    exit: {{}}
"""
TOUR = """
journey: tour
name: Tour
category: service
trigger: {event: Tour Started}
start: first
steps:
  first:
    send: {channel: email, template: hello}
    next: pause
  pause:
    wait: 1s
    next: second
  second:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""
POLICY = REACH_EVERYONE + (
    f"caps:\n  - {{name: two_a_day, max: {CAP}, window: 24h, category: promotional}}\n"
    "on_cap: suppress\n"
)


async def start_api(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), "api", "--log-level", "warning",
        env={**env, "ORCHESTRATOR_API_PORT": str(port)},
    )  # fmt: skip


async def enter(apis: list[str], event: str, users: list[str]) -> None:
    """Each user's event through the APIs in turn (round-robin), 16 at a time."""
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(index: int, user: str) -> None:
            async with gate:
                response = await http.post(
                    f"{apis[index % len(apis)]}/v1/track",
                    auth=(WRITE_KEY, ""),
                    json={"userId": user, "event": event},
                )
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))


async def all_finished(engine: AsyncEngine, journeys: list[str], expected: int) -> None:
    async def done() -> bool:
        [row] = await rows(
            engine,
            "SELECT count(*) FILTER (WHERE status = 'completed') AS done FROM enrollments"
            " WHERE journey_key = ANY(:j)",
            j=journeys,
        )
        return int(row["done"]) == expected

    await eventually(done, timeout=120)


async def test_two_apis_and_two_workers_behave_like_one(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    journeys = {f"sale_{x}": SALE.format(x=x) for x in "abc"} | {"tour": TOUR}
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys=journeys,
                           policy=POLICY)  # fmt: skip
    config = root / "orchestrator.yaml"
    # Deliveries held at the receiver below must not time out meanwhile.
    config.write_text(config.read_text().replace("timeout: 2\n", "timeout: 60\n"))
    client = dev_server.client
    prepared = await worker_processes(
        root, engine=engine, postgres_url=postgres_url, client=client, prefix="topology"
    )
    queue = prepared.env["ORCHESTRATOR_TASK_QUEUE"]
    ports = [free_port(), free_port()]
    apis = [await start_api(prepared.env, port) for port in ports]
    workers = [await prepared.start(quiet=True), await prepared.start(quiet=True)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        async with httpx.AsyncClient() as http:
            for url in urls:

                async def up(url: str = url) -> bool:
                    try:
                        return (await http.get(f"{url}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await eventually(up, timeout=60)
        settings = Settings(task_queue=queue, database_url=postgres_url)

        async def both_poll() -> bool:
            found = await check_workers(client, settings, timeout=3)
            return found.message.startswith(f"2 worker(s) poll '{queue}'")

        await eventually(both_poll, timeout=60)

        # Phase 1: three promotional journeys want every user at once; the cap lets two
        # through per user, whichever worker decides.
        sale_users = [f"sale-{i:02d}" for i in range(USERS)]
        await enter(urls, "Sale Started", sale_users)
        await all_finished(engine, ["sale_a", "sale_b", "sale_c"], 3 * USERS)
        sent = receiver.at("/email")
        by_id = Counter(r.msg_id for r in sent)
        assert len(by_id) == CAP * USERS
        assert set(by_id.values()) == {1}  # each message exactly once
        assert all(r.verified for r in sent)
        per_user = Counter(r.json["data"]["recipient"]["user_id"] for r in sent)
        assert per_user == dict.fromkeys(sale_users, CAP)
        stored = await rows(engine, "SELECT id, user_id, status FROM messages")
        assert {r["id"] for r in stored} == set(by_id)
        assert {r["status"] for r in stored} == {"sent"}
        decided = await rows(
            engine,
            "SELECT user_id, action, count(*) AS n, bool_and(reason LIKE '%two_a_day%') AS capped"
            " FROM arbitration_decisions GROUP BY user_id, action",
        )
        assert {(r["user_id"], r["action"]): r["n"] for r in decided} == {
            (user, action): n
            for user in sale_users
            for action, n in (("send", CAP), ("suppress", 3 - CAP))
        }
        assert all(r["capped"] for r in decided if r["action"] == "suppress")

        # Phase 2: a worker is killed while both have deliveries in flight.
        receiver.requests.clear()
        receiver.hold = asyncio.Event()
        tour_users = [f"tour-{i:02d}" for i in range(USERS)]
        await enter(urls[::-1], "Tour Started", tour_users)
        # A worker posts at most 16 messages to a provider at once (max_in_flight):
        # with 17 held, both workers have deliveries in flight.
        await eventually(lambda: _at_least(receiver, 17), timeout=60)
        victim = workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        assert await asyncio.wait_for(victim.wait(), 10) == -signal.SIGKILL
        receiver.hold.set()
        await all_finished(engine, ["tour"], USERS)
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        for process in [*apis, *workers]:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in [*apis, *workers]]
        await _clean_up(dev_server, engine, queue)
    assert codes == [0, 0, -signal.SIGKILL, 0]

    tour = await rows(
        engine,
        "SELECT id, user_id, channel, status, attempts FROM messages WHERE journey_key = 'tour'",
    )
    assert Counter((r["user_id"], r["channel"]) for r in tour) == {
        (user, channel): 1 for user in tour_users for channel in ("email", "push")
    }
    assert {r["status"] for r in tour} == {"sent"}
    arrived = Counter(r.msg_id for r in receiver.requests)
    attempts = {r["id"]: r["attempts"] for r in tour}
    assert set(arrived) == set(attempts)  # none lost, none made up
    # A message whose delivery the kill interrupted was posted again, under its own id
    # (the provider drops the repeat by webhook-id), and each repeat is a recorded attempt.
    assert all(arrived[m] <= attempts[m] for m in attempts)
    assert any(n > 1 for n in attempts.values())
    assert all(r.verified for r in receiver.requests)


async def _at_least(receiver: Receiver, held: int) -> bool:
    return receiver.held >= held


async def _clean_up(env: WorkflowEnvironment, engine: AsyncEngine, queue: str) -> None:
    """What a worker with upkeep leaves on the session's Temporal: the segments upkeep,
    the retention schedule, and any journey still waiting."""
    with contextlib.suppress(RPCError):
        await env.client.get_workflow_handle(f"segments:{queue}").terminate()
    with contextlib.suppress(RPCError):
        await env.client.get_schedule_handle(f"retention:{queue}").delete()
    await terminate_unfinished(env.client, engine)
