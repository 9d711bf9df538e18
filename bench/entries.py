"""Journey entries per second: through our HTTP API vs bare signal-with-start.

Both paths start the same JourneyWorkflow with the same start request (the one
the router sends) on the same dev server, in the same run, at the same
concurrency; ours adds the HTTP request, validation, storing the event, the entry
decision and the enrollment in Postgres. An entry counts once its workflow has run
its first task and is waiting in the journey (visible as JourneyStatus = 'waiting').

    .venv/bin/python -m bench.entries [--users 400] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy.dialects.postgresql import insert

from bench.harness import WRITE_KEY, BenchStack, bench_stack
from bench.http_load import Connection
from orchestrator.enrollment import Entry, Installation, start_journey
from orchestrator.event_store import StoredEvent
from orchestrator.registry import JourneyRegistry
from orchestrator.tables import enrollments

JOURNEY = """
journey: entry
name: Entry benchmark
trigger: {event: Signed Up}
start: pause
steps:
  pause:
    wait: 7d
    next: done
  done:
    exit: {}
"""


async def through_api(stack: BenchStack, users: list[str], concurrency: int) -> None:
    queue = list(reversed(users))

    async def client() -> None:
        connection = Connection(stack.api_url, write_key=WRITE_KEY)
        while queue:
            user = queue.pop()
            body = {"userId": user, "event": "Signed Up", "messageId": str(uuid.uuid4())}
            status = await connection.post("/v1/track", body)
            assert status == 200, status
        await connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def enroll_for_bare(stack: BenchStack, users: list[str]) -> list[Entry]:
    """The enrollment rows the workflows write their progress to, made before timing."""
    deployed = (await JourneyRegistry(stack.engine).snapshot()).by_trigger["Signed Up"][0]
    now = datetime.now(UTC)
    async with stack.engine.begin() as conn:
        ids = (
            await conn.execute(
                insert(enrollments)
                .values([
                    {"journey_key": "entry", "version": deployed.version, "user_id": user,
                     "status": "active", "trigger_message_id": f"bare-{user}", "entered_at": now}
                    for user in users
                ])
                .returning(enrollments.c.id)
            )
        ).scalars().all()  # fmt: skip
    return [
        Entry(deployed, StoredEvent(0, f"bare-{user}", "Signed Up", user, {}, now), id_, now)
        for user, id_ in zip(users, ids, strict=True)
    ]


async def bare(stack: BenchStack, entries: list[Entry], concurrency: int) -> None:
    queue = list(reversed(entries))
    installation = await Installation(stack.engine).id()

    async def client() -> None:
        while queue:
            await start_journey(
                stack.client, queue.pop(), task_queue=stack.task_queue,
                default_timezone="UTC", history_limit=2000, installation_id=installation,
            )  # fmt: skip

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def waiting(stack: BenchStack, prefix: str) -> int:
    query = f"JourneyKey = 'entry' AND JourneyStatus = 'waiting' AND UserId STARTS_WITH '{prefix}'"
    return (await stack.client.count_workflows(query)).count


async def measure(
    stack: BenchStack, kind: str, prefix: str, users: int, concurrency: int
) -> tuple[float, float]:
    """(accepted per second, running per second) for one batch of entries."""
    names = [f"{prefix}{i}" for i in range(users)]
    if kind == "bare":
        entries = await enroll_for_bare(stack, names)
    started = time.perf_counter()
    if kind == "bare":
        await bare(stack, entries, concurrency)
    else:
        await through_api(stack, names, concurrency)
    accepted = time.perf_counter() - started
    while await waiting(stack, prefix) < users:
        await asyncio.sleep(0.05)
    running = time.perf_counter() - started
    return users / accepted, users / running


async def main(users: int, concurrency: int, rounds: int) -> None:
    async with bench_stack({"entry": JOURNEY}) as stack:
        await measure(stack, "api", "warm-api-", 100, concurrency)
        await measure(stack, "bare", "warm-bare-", 100, concurrency)
        results: dict[str, list[tuple[float, float]]] = {"api": [], "bare": []}
        for r in range(rounds):  # interleaved, so both see the same machine
            for name in ("api", "bare"):
                results[name].append(await measure(stack, name, f"{name}-{r}-", users, concurrency))
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{n} {v[-1][1]:.1f}/s running ({v[-1][0]:.1f}/s accepted)"
                    for n, v in results.items()
                )
            )
        api = sum(v[1] for v in results["api"]) / rounds
        bare_rate = sum(v[1] for v in results["bare"]) / rounds
        print(f"journey entries through the HTTP API into running workflows: {api:.1f}/s")
        print(f"bare signal-with-start into running workflows:              {bare_rate:.1f}/s")
        print(f"ratio: {api / bare_rate:.0%} of bare (target: at least 80%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.concurrency, args.rounds))
