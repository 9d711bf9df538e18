"""Events per second accepted by /v1/batch for events that trigger nothing, next to raw
asyncpg inserts of the same rows into the same table, in the same run.

Batches of 100 (what Segment's libraries send), the same number of concurrent
connections on both sides; every event carries a realistic Segment context.

    .venv/bin/python -m bench.ingest [--events 40000] [--concurrency 4] [--signed-in]

`--signed-in`: every event also carries its visitor's anonymousId, as a signed-in
visitor's do in Segment's browser library: the first round joins each of the 5,000
users to their device (a merge each), later rounds find them joined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.harness import WRITE_KEY, BenchStack, bench_stack
from bench.http_load import Connection

BATCH = 100
CONTEXT = {
    "library": {"name": "analytics-python", "version": "2.4.0"},
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36",
    "page": {"path": "/products/storm-jacket", "referrer": "https://www.example.com/"},
    "locale": "en-GB",
}


SIGNED_IN = False


def message(i: int, run: str) -> dict[str, object]:
    device = {"anonymousId": f"device-{i % 5000}"} if SIGNED_IN else {}
    return {
        **device,
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{i % 5000}",
        "messageId": f"{run}-{i}",
        "timestamp": "2026-11-26T12:00:00.000Z",
        "properties": {"sku": f"SKU-{i % 800}", "price": 79.0, "category": "outerwear",
                       "position": i % 12},
        "context": CONTEXT,
    }  # fmt: skip


async def through_api(stack: BenchStack, events: int, concurrency: int) -> float:
    run = uuid.uuid4().hex[:8]
    bodies = [
        {"batch": [message(i, run) for i in range(start, min(events, start + BATCH))]}
        for start in range(0, events, BATCH)
    ]
    queue = list(reversed(bodies))

    async def client() -> None:
        connection = Connection(stack.api_url, write_key=WRITE_KEY)
        while queue:
            assert await connection.post("/v1/batch", queue.pop()) == 200
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return events / (time.perf_counter() - started)


async def raw_asyncpg(stack: BenchStack, events: int, concurrency: int) -> float:
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    stamp = datetime(2026, 11, 26, 12, tzinfo=UTC)
    rows = [
        (m["messageId"], "bench", "track", m["event"], m["userId"], m.get("anonymousId"),
         json.dumps(m["properties"]), "{}", json.dumps(m["context"]), stamp, now, now)
        for m in (message(i, run) for i in range(events))
    ]  # fmt: skip
    batches = [rows[i : i + BATCH] for i in range(0, events, BATCH)]
    dsn = stack.database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    sql = (
        "INSERT INTO events (message_id, source, type, event, user_id, anonymous_id, "
        "properties, traits, context, timestamp, received_at, routed_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12)"
    )
    queue = list(reversed(batches))

    async def client() -> None:
        async with pool.acquire() as conn:
            while queue:
                batch = queue.pop()
                async with conn.transaction():
                    await conn.executemany(sql, batch)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = events / (time.perf_counter() - started)
    await pool.close()
    return rate


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children still running (the API's
    workers), from /proc: it does not count time spent waiting for a core, which other
    work on a shared machine makes noisy."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own, parent = int(stat.parent.name), int(fields[1])
        if own == pid or parent == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def main(events: int, concurrency: int, rounds: int, api_processes: int) -> None:
    async with bench_stack({}, worker=False, api_processes=api_processes) as stack:
        await through_api(stack, 2000, concurrency)  # warm up
        await raw_asyncpg(stack, 2000, concurrency)
        api, raw, cpu = [], [], []
        for r in range(rounds):
            before = cpu_seconds(stack.api.pid)
            api.append(await through_api(stack, events, concurrency))
            cpu.append((cpu_seconds(stack.api.pid) - before) / events * 1e6)
            raw.append(await raw_asyncpg(stack, events, concurrency))
            print(f"round {r + 1}: /v1/batch {api[-1]:.0f} events/s ({cpu[-1]:.1f} us of API "
                  f"CPU an event), raw asyncpg {raw[-1]:.0f}/s")  # fmt: skip
        a, b = sum(api) / rounds, sum(raw) / rounds
        print(f"/v1/batch (events that trigger nothing): {a:.0f} events/s")
        print(f"raw asyncpg inserts of the same rows:    {b:.0f} events/s")
        print(f"ratio: {a / b:.0%} (target: at least 50%), {api_processes} API process(es)")
        print(f"API CPU per event: {sum(cpu) / rounds:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--signed-in", action="store_true")
    args = parser.parse_args()
    SIGNED_IN = args.signed_in
    asyncio.run(main(args.events, args.concurrency, args.rounds, args.api_processes))
