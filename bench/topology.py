"""Throughput of one API and one worker process against two of each, on one stack.

The same Postgres and Temporal dev server serve both shapes, in the same run, rounds
interleaved: for "1+1" the load goes to one `orchestrator api` and one `orchestrator
worker` polls; for "2+2" it is spread over two API processes (round-robin per client
connection) and a second worker polls the same task queue (started before the round,
stopped after it). Each entered user's journey sends one email to a receiver on
loopback; figures are journeys entered per second (the API's answers) and messages
delivered per second (until the last webhook arrives).

On a 2-core machine every process shares the same two cores with Postgres, Temporal
and the load generator, so this shows the overhead of more processes, not a speed-up.

    .venv/bin/python -m bench.topology [--users 300] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.harness import BIN, WRITE_KEY, BenchStack, _wait_http, bench_stack
from bench.http_load import Connection
from orchestrator.doctor.temporal import check_workers
from orchestrator.settings import Settings
from orchestrator.stack.processes import free_port
from orchestrator.stack.servers import serving

JOURNEY = """
journey: hello
name: Hello
category: transactional
trigger: {event: Signed Up}
start: tell
steps:
  tell:
    send: {channel: email, template: note}
    next: done
  done:
    exit: {}
"""

# Users are addressed by id alone: no `email` trait needed to be reachable.
POLICY = "reachability: {email: null}\n"


class Deliveries:
    """Counts the distinct messages that arrive (by webhook-id)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.last = 0.0

    async def receive(self, request: Request) -> JSONResponse:
        await request.body()
        self.ids.add(request.headers.get("webhook-id", ""))
        self.last = time.perf_counter()
        return JSONResponse({"ok": True})


@asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, Deliveries]]:
    deliveries = Deliveries()
    app = Starlette(routes=[Route("/email", deliveries.receive, methods=["POST"])])
    async with serving(app) as url:
        yield url, deliveries


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    started = subprocess.Popen(
        [str(BIN / "orchestrator"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield started
    finally:
        started.terminate()
        try:
            started.wait(30)
        except subprocess.TimeoutExpired:
            started.kill()


async def enter(urls: list[str], users: list[str], concurrency: int) -> None:
    """Each client keeps one connection, to the API its number picks (round-robin)."""
    queue = list(reversed(users))

    async def client(index: int) -> None:
        connection = Connection(urls[index % len(urls)], write_key=WRITE_KEY)
        while queue:
            body = {"userId": queue.pop(), "event": "Signed Up", "messageId": str(uuid.uuid4())}
            status = await connection.post("/v1/track", body)
            assert status == 200, status
        await connection.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))


async def measure(
    urls: list[str], deliveries: Deliveries, prefix: str, users: int, concurrency: int
) -> tuple[float, float]:
    """(entered per second, delivered per second) for one batch of users."""
    names = [f"{prefix}{i}" for i in range(users)]
    before = len(deliveries.ids)
    started = time.perf_counter()
    await enter(urls, names, concurrency)
    entered = time.perf_counter() - started
    while len(deliveries.ids) < before + users:
        await asyncio.sleep(0.02)
    delivered = deliveries.last - started
    return users / entered, users / delivered


async def one_round(
    stack: BenchStack,
    shape: str,
    second_api: str,
    deliveries: Deliveries,
    prefix: str,
    users: int,
    concurrency: int,
) -> tuple[float, float]:
    if shape == "1+1":
        return await measure([stack.api_url], deliveries, prefix, users, concurrency)
    with process(["worker"], stack.env) as worker:
        await polling(stack, worker.pid)
        urls = [stack.api_url, second_api]
        return await measure(urls, deliveries, prefix, users, concurrency)


async def polling(stack: BenchStack, pid: int) -> None:
    """Until the worker process `pid` polls the task queue (it imports, then connects)."""
    settings = Settings(task_queue=stack.task_queue, database_url=stack.database_url)
    while f"{pid}@" not in (await check_workers(stack.client, settings, timeout=3)).message:
        await asyncio.sleep(0.2)


async def main(users: int, concurrency: int, rounds: int) -> None:
    async with receiving() as (receiver_url, deliveries), bench_stack(
        {"hello": JOURNEY}, receiver_url=receiver_url, files={"policy.yaml": POLICY}
    ) as stack:  # fmt: skip
        port = free_port()
        env = {**stack.env, "ORCHESTRATOR_API_PORT": str(port)}
        with process(["api"], env):
            second_api = f"http://127.0.0.1:{port}"
            await _wait_http(f"{second_api}/healthz")
            await measure([stack.api_url, second_api], deliveries, "warm-", 100, concurrency)
            results: dict[str, list[tuple[float, float]]] = {"1+1": [], "2+2": []}
            for r in range(rounds):  # interleaved, so both see the same machine
                for shape in results:
                    results[shape].append(await one_round(
                        stack, shape, second_api, deliveries, f"{shape}-{r}-", users,
                        concurrency,
                    ))  # fmt: skip
                print(f"round {r + 1}: " + ", ".join(
                    f"{shape} {v[-1][0]:.1f} entered/s, {v[-1][1]:.1f} delivered/s"
                    for shape, v in results.items()
                ))  # fmt: skip
        mean = {
            shape: tuple(sum(v[i] for v in values) / rounds for i in (0, 1))
            for shape, values in results.items()
        }
        for shape, (entered, delivered) in mean.items():
            print(f"{shape} (API + worker processes): {entered:.1f} journeys entered/s, "
                  f"{delivered:.1f} messages delivered/s")  # fmt: skip
        print(
            f"2+2 / 1+1: entered {mean['2+2'][0] / mean['1+1'][0]:.0%}, "
            f"delivered {mean['2+2'][1] / mean['1+1'][1]:.0%} "
            f"(on {os.cpu_count()} cores: every process shares them)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.concurrency, args.rounds))
