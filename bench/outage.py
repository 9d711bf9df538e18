"""Ingestion while Temporal is away: how fast `/v1/track` answers with Temporal up, then
stopped, in the same run, and how long routing takes to catch up once it is back.

Every event triggers a journey, so with Temporal up each request starts a workflow.
With it stopped, the API stores the event and answers; the sweeper routes what was
left once Temporal answers again.

    .venv/bin/python -m bench.outage [--events 300] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from sqlalchemy import text

from bench.harness import WRITE_KEY, BenchStack, bench_stack, percentile, summary
from bench.http_load import Connection

JOURNEY = """
journey: hello
name: Hello
category: service
trigger: {event: Signed Up}
start: pause
steps:
  pause: {wait: 1m, next: done}
  done: {exit: {}}
"""


async def send(stack: BenchStack, events: int, rate: float) -> list[float]:
    """Track `events` sign-ups at a steady rate; each request's latency in ms."""
    connection = Connection(stack.api_url, write_key=WRITE_KEY)
    took: list[float] = []
    start = time.perf_counter()
    for i in range(events):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        body = {"userId": f"u-{uuid.uuid4().hex[:12]}", "event": "Signed Up",
                "messageId": str(uuid.uuid4())}  # fmt: skip
        sent = time.perf_counter()
        assert await connection.post("/v1/track", body) == 200
        took.append((time.perf_counter() - sent) * 1000)
    await connection.close()
    return took


async def unrouted(stack: BenchStack) -> int:
    async with stack.engine.connect() as conn:
        found = await conn.execute(text("SELECT count(*) FROM events WHERE routed_at IS NULL"))
        return int(found.scalar_one())


async def main(events: int, rate: float) -> None:
    # The sweeper looks for events left unrouted for 5 s (30 s by default).
    environment = {"ORCHESTRATOR_REROUTE_AFTER_SECONDS": "5"}
    async with bench_stack({"hello": JOURNEY}, environment=environment) as stack:
        await send(stack, 20, rate)  # warm up
        up = await send(stack, events, rate)
        await asyncio.to_thread(stack.temporal.stop)
        down = await send(stack, events, rate)
        left = await unrouted(stack)
        back = time.perf_counter()
        await asyncio.to_thread(stack.temporal.start)
        await stack.temporal.wait_ready()
        while await unrouted(stack):
            await asyncio.sleep(0.5)
        caught_up = time.perf_counter() - back
    print(f"/v1/track, each event starting a journey, {rate:g}/s:")
    print(f"  Temporal up:      {summary(up)}")
    print(f"  Temporal stopped: {summary(down)}")
    print(f"  p99 stopped / up: {percentile(down, 99) / percentile(up, 99):.2f}")
    print(f"  stored unrouted while stopped: {left} of {events}")
    print(f"  routed {caught_up:.1f} s after Temporal was started again")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rate))
