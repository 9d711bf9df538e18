"""Kafka in and out, each beside its baseline in the same run.

1. Records per second consumed, stored and routed by `orchestrator consume` (events
   that trigger nothing: product views with a realistic context), from a backlog
   produced while the consumer was stopped, next to `/v1/batch` taking the same
   messages over 4 connections. The consumer and the API are each one process.
2. The time to drain a 100,000-record backlog after the consumer was stopped.
3. The outbox: facts published per second by `orchestrator relay` from a backlog (the
   relay stopped while 1,000 users went through a one-email journey), and the delay
   from a fact's transaction to its record being acknowledged by the broker while
   users enter at a steady 20 a second with the relay running (p50/p99).

    .venv/bin/python -m bench.kafka [--records 20000] [--rounds 2] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.harness import BIN, WRITE_KEY, BenchStack, bench_stack, percentile
from bench.http_load import Connection
from bench.ingest import message, through_api
from orchestrator.kafka.relay import switch_on
from orchestrator.stack.kafka import LocalBroker, ensure_topics
from orchestrator.stack.processes import free_port
from orchestrator.stack.servers import serving

JOURNEY = """
journey: hello
name: Hello
trigger: {event: Signed Up}
start: hello
steps:
  hello:
    send: {channel: email, template: note}
    next: done
  done:
    exit: {}
"""


async def _accept(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": uuid.uuid4().hex})


def _env(stack: BenchStack) -> dict[str, str]:
    return {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": stack.database_url,
        "ORCHESTRATOR_TEMPORAL_ADDRESS": stack.temporal.address,
        "ORCHESTRATOR_WORKSPACE": str(stack.workspace),
        "ORCHESTRATOR_TASK_QUEUE": stack.task_queue,
    }


def _start(command: str, stack: BenchStack) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "orchestrator"), command, "--log-level", "warning"], env=_env(stack),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


async def _count(stack: BenchStack, sql: str) -> int:
    async with stack.engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)


async def _produce(bootstrap: str, records: int) -> None:
    run = uuid.uuid4().hex[:8]
    # Batched as a busy producer batches (the local broker hands out a batch at a time).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100, max_batch_size=1 << 20)
    await producer.start()
    try:
        for i in range(records):
            body = message(i, run)
            await producer.send("events", key=str(body["userId"]).encode(),
                                value=orjson.dumps(body))  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()


async def drain(stack: BenchStack, bootstrap: str, records: int) -> tuple[float, float]:
    """Records per second the consumer stores from a backlog of `records`, from its first
    stored record (the process started and joined its group) to the last; and the
    seconds from starting the process to the last."""
    before = await _count(stack, "SELECT count(*) FROM events")
    await _produce(bootstrap, records)
    consumer = _start("consume", stack)
    started = time.perf_counter()
    first = None
    try:
        while (stored := await _count(stack, "SELECT count(*) FROM events")) < before + records:
            if first is None and stored > before:
                first = (time.perf_counter(), stored - before)
            await asyncio.sleep(0.05)
        done = time.perf_counter()
        begun, already = first or (started, 0)
        return (records - already) / (done - begun), done - started
    finally:
        _stop(consumer)


async def enter(stack: BenchStack, users: int, rate: float | None) -> None:
    connection = Connection(stack.api_url, write_key=WRITE_KEY)
    try:
        for _ in range(users):
            user = f"entrant-{uuid.uuid4().hex[:10]}"
            body = {"userId": user, "event": "Signed Up", "messageId": str(uuid.uuid4())}
            assert await connection.post("/v1/track", body) == 200
            if rate:
                await asyncio.sleep(1 / rate)
    finally:
        await connection.close()


async def main(records: int, rounds: int, backlog: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(port=free_port(), log_dir=Path(tmp))
        broker.start()
        await broker.wait_ready()
        config = (
            f"kafka:\n  bootstrap_servers: {broker.bootstrap_servers}\n"
            "  consume: {topics: [events], group_id: bench, source: bench,"
            " dead_letter_topic: dead}\n  publish: {topic: facts}\n"
        )
        await ensure_topics({"bootstrap_servers": broker.bootstrap_servers},
                            {"events": 12, "dead": 1, "facts": 12})  # fmt: skip
        app = Starlette(routes=[Route("/{path:path}", _accept, methods=["POST"])])
        try:
            async with (
                serving(app) as receiver_url,
                bench_stack({"hello": JOURNEY}, receiver_url=receiver_url,
                            config=config) as stack,
            ):  # fmt: skip
                for n in range(rounds):
                    http = await through_api(stack, records, concurrency=4)
                    kafka, _ = await drain(stack, broker.bootstrap_servers, records)
                    print(f"round {n + 1}: {records:,} events: /v1/batch {http:,.0f}/s, "
                          f"consume {kafka:,.0f}/s ({kafka / http:.0%})", flush=True)  # fmt: skip
                rate, took = await drain(stack, broker.bootstrap_servers, backlog)
                print(f"a {backlog:,}-record backlog drained {took:.1f} s after the consumer "
                      f"started ({rate:,.0f}/s once it had joined)", flush=True)  # fmt: skip
                await outbox(stack)
        finally:
            broker.stop()


async def outbox(stack: BenchStack) -> None:
    await switch_on(stack.engine)
    # A backlog of facts with the relay stopped, then published.
    await enter(stack, 1000, None)
    await asyncio.sleep(15)  # the journeys finish (their facts are written as they go)
    backlog = await _count(stack, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
    relay = _start("relay", stack)
    started = time.perf_counter()
    try:
        while await _count(stack, "SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        print(f"outbox: {backlog:,} facts published in {elapsed:.1f} s "
              f"({backlog / elapsed:,.0f}/s)", flush=True)  # fmt: skip
        # The delay from a fact's transaction to its record acknowledged, at a steady
        # 20 entries a second with the relay running.
        mark = await _count(stack, "SELECT coalesce(max(id), 0) FROM outbox")
        await enter(stack, 600, 20.0)
        await asyncio.sleep(5)
        async with stack.engine.connect() as conn:
            delays = [
                float(d)
                for d in await conn.scalars(
                    text("SELECT extract(epoch FROM published_at - created_at) * 1000 "
                         "FROM outbox WHERE id > :m AND published_at IS NOT NULL"),
                    {"m": mark},
                )
            ]  # fmt: skip
        print(f"outbox: fact to published record at 20 entries/s: p50 "
              f"{percentile(delays, 50):.0f} ms, p99 {percentile(delays, 99):.0f} ms "
              f"({len(delays):,} facts)", flush=True)  # fmt: skip
    finally:
        _stop(relay)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.rounds, args.backlog))
