"""Journey entries per second: through our HTTP API vs bare signal-with-start.

Both paths start the same JourneyWorkflow with the same input on the same dev
server, in the same run, with the same concurrency; ours adds the HTTP request,
validation, storing the event, the entry decision and enrollment in Postgres.

    .venv/bin/python -m bench.entries [--users 600] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from bench.harness import WRITE_KEY, BenchStack, bench_stack
from orchestrator.registry import JourneyRegistry
from workflows.messages import EnterSignal, EventSignal, JourneyInput
from workflows.search import workflow_id

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


async def through_api(stack: BenchStack, users: list[str], concurrency: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            while not queue.empty():
                user = queue.get_nowait()
                response = await http.post(
                    f"{stack.api_url}/v1/track",
                    auth=(WRITE_KEY, ""),
                    json={"userId": user, "event": "Signed Up", "messageId": str(uuid.uuid4())},
                )
                response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def bare(stack: BenchStack, users: list[str], concurrency: int) -> float:
    deployed = (await JourneyRegistry(stack.engine).snapshot()).by_trigger["Signed Up"][0]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)

    async def client() -> None:
        while not queue.empty():
            user = queue.get_nowait()
            trigger = EventSignal(
                message_id=str(uuid.uuid4()), name="Signed Up", timestamp=datetime.now(UTC)
            )
            await stack.client.start_workflow(
                "JourneyWorkflow",
                JourneyInput(
                    journey=deployed,
                    user_id=user,
                    enrollment_id=0,
                    entered_at=trigger.timestamp,
                    trigger=trigger,
                ),
                id=workflow_id("entry", user),
                task_queue=stack.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal="enter",
                start_signal_args=[EnterSignal(enrollment_id=0, version=1, trigger=trigger)],
            )

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def running(stack: BenchStack, users: list[str]) -> int:
    alive = 0
    for user in users[:: max(1, len(users) // 50)]:
        description = await stack.client.get_workflow_handle(workflow_id("entry", user)).describe()
        alive += description.status == WorkflowExecutionStatus.RUNNING
    return alive


async def main(users: int, concurrency: int, rounds: int) -> None:
    async with bench_stack({"entry": JOURNEY}) as stack:
        # warm up both paths (connections, caches, worker)
        await through_api(stack, [f"warm-api-{i}" for i in range(50)], concurrency)
        await bare(stack, [f"warm-bare-{i}" for i in range(50)], concurrency)
        api_rates, bare_rates = [], []
        for r in range(rounds):  # interleaved, so both see the same machine
            api_users = [f"api-{r}-{i}" for i in range(users)]
            bare_users = [f"bare-{r}-{i}" for i in range(users)]
            api_rates.append(users / await through_api(stack, api_users, concurrency))
            bare_rates.append(users / await bare(stack, bare_users, concurrency))
            sample = await running(stack, api_users)
            print(
                f"round {r + 1}: api {api_rates[-1]:.1f}/s, bare {bare_rates[-1]:.1f}/s "
                f"({sample} sampled api workflows running)"
            )
        api_rate, bare_rate = sum(api_rates) / rounds, sum(bare_rates) / rounds
        print(f"journey entries through the HTTP API: {api_rate:.1f} per second")
        print(f"bare signal-with-start:               {bare_rate:.1f} per second")
        print(f"ratio: {api_rate / bare_rate:.0%} of bare (target: at least 80%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.concurrency, args.rounds))
