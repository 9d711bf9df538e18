"""Event-to-delivered-webhook latency at a steady rate, next to bare Temporal.

Ours: a tracked event (HTTP) triggers a journey whose first step sends an email;
latency runs from sending the event to the signed webhook arriving at a local
receiver. Bare: signal-with-start of a one-activity workflow whose activity POSTs
to the same receiver, on the same dev server, at the same rate, in the same run.

    .venv/bin/python -m bench.latency [--rate 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio import activity, workflow
from temporalio.worker import Worker

from bench.harness import WRITE_KEY, BenchStack, bench_stack, summary
from bench.http_load import Connection
from orchestrator.stack.servers import serving

JOURNEY = """
journey: receipt
name: Order receipt
category: transactional
trigger: {event: Order Placed}
start: confirm
steps:
  confirm:
    send: {channel: email, template: note}
    next: done
  done:
    exit: {}
"""


class Arrivals:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def receive(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        user = body.get("data", {}).get("recipient", {}).get("user_id") or body.get("user")
        self.at.setdefault(user, time.perf_counter())
        return JSONResponse({"ok": True})


@activity.defn(name="bare_post")
async def bare_post(url_and_user: list[str]) -> None:
    url, user = url_and_user
    async with httpx.AsyncClient() as http:
        (await http.post(url, json={"user": user})).raise_for_status()


@workflow.defn(name="BareSend", sandboxed=False)
class BareSend:
    @workflow.signal
    def go(self) -> None:
        pass

    @workflow.run
    async def run(self, url: str, user: str) -> None:
        await workflow.execute_activity(
            "bare_post", [url, user], start_to_close_timeout=timedelta(seconds=10)
        )


async def steady(
    rate: float, seconds: float, send: Callable[[str], Awaitable[None]]
) -> dict[str, float]:
    sent: dict[str, float] = {}
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        user = f"u{i}-{uuid.uuid4().hex[:6]}"
        sent[user] = time.perf_counter()
        tasks.append(asyncio.create_task(send(user)))
    await asyncio.gather(*tasks)
    return sent


async def wait_all(arrivals: Arrivals, sent: dict[str, float], timeout: float = 60) -> list[float]:
    deadline = time.perf_counter() + timeout
    while any(u not in arrivals.at for u in sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    return [(arrivals.at[u] - t) * 1000 for u, t in sent.items() if u in arrivals.at]


async def main(rate: float, seconds: float) -> None:
    arrivals = Arrivals()
    app = Starlette(routes=[Route("/{path:path}", arrivals.receive, methods=["POST"])])
    async with (
        serving(app) as receiver_url,
        bench_stack({"receipt": JOURNEY}, receiver_url=receiver_url) as stack,
    ):
        await run(stack, arrivals, receiver_url, rate, seconds)


async def run(
    stack: BenchStack, arrivals: Arrivals, receiver_url: str, rate: float, seconds: float
) -> None:
    connections = [Connection(stack.api_url, write_key=WRITE_KEY) for _ in range(8)]
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in connections:
        free.put_nowait(connection)

    async def ours(user: str) -> None:
        connection = await free.get()
        try:
            body = {"userId": user, "event": "Order Placed", "properties": {"cart_value": 12},
                    "context": {"traits": {"email": f"{user}@example.com"}}}  # fmt: skip
            assert await connection.post("/v1/track", body) == 200
        finally:
            free.put_nowait(connection)

    async def bare(user: str) -> None:
        await stack.client.start_workflow(
            "BareSend", args=[f"{receiver_url}/bare", user], id=f"bare-{user}",
            task_queue="bare-latency", start_signal="go",
        )  # fmt: skip

    async with Worker(stack.client, task_queue="bare-latency", workflows=[BareSend],
                      activities=[bare_post]):  # fmt: skip
        await steady(rate, 3, ours)  # warm up
        await steady(rate, 3, bare)
        results: dict[str, list[float]] = {"ours": [], "bare": []}
        for name, send in (("ours", ours), ("bare", bare)):
            sent = await steady(rate, seconds, send)
            results[name] = await wait_all(arrivals, sent)
            lost = len(sent) - len(results[name])
            print(f"{name}: {summary(results[name])}" + (f", {lost} missing" if lost else ""))
    print(
        f"event to delivered webhook at {rate:g}/s: {summary(results['ours'])} "
        "(target: p99 under 300 ms)"
    )
    print(f"bare signal-with-start to activity POST:  {summary(results['bare'])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds))
