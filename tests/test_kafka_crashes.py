"""Kafka processes SIGKILLed again and again. The consumer, while 5,000 records flow:
every record is stored exactly once, no journey is entered twice, no message is sent
twice. The relay, while journeys run: every fact is published, a repeat only under the
same id. Real processes (`orchestrator consume`, `worker`, `relay`), the local broker,
Postgres and Temporal."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.kafka.facts import schema
from orchestrator.kafka.relay import KafkaSink, Relay, switch_on
from orchestrator.stack.kafka import ensure_topics
from tests.conftest import BIN, StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually, terminate_unfinished, worker_processes
from tests.support.workspace import write_workspace
from tests.workflows.test_delivery import ONE_SEND

USERS = 500
PER_USER = 10  # an identify, a sign-up, eight page views
KILLS = 10
# Settings of the processes: a dead consumer's partitions move after 6 s, and unrouted
# events (a consumer killed between storing and routing) are swept after 2 s.


async def test_a_consumer_killed_ten_times_loses_and_repeats_nothing(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    kafka_broker: str,
    tmp_path: Path,
) -> None:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    config = f"""
kafka:
  bootstrap_servers: {kafka_broker}
  consume: {{topics: [{topic}], group_id: g-{topic}, source: tests,
             dead_letter_topic: {topic}-dead, max_batch: 200, session_timeout: 6s}}
"""
    root = write_workspace(
        tmp_path / "ws", receiver_url=receiver.url, journeys={"once": ONE_SEND}, config=config
    )
    await ensure_topics({"bootstrap_servers": kafka_broker}, {topic: 4, f"{topic}-dead": 1})
    client = dev_server.client
    workers = await worker_processes(
        root, engine=engine, postgres_url=postgres_url, client=client, prefix="kafka"
    )
    records = []
    for n in range(USERS):
        user = f"shopper-{n}"
        records.append((user, {"type": "identify", "userId": user,
                               "traits": {"email": f"{user}@example.com"}}))  # fmt: skip
        records.append((user, {"type": "track", "userId": user, "event": "Signed Up"}))
        records += [(user, {"type": "track", "userId": user, "event": "Page Viewed",
                            "properties": {"n": k}}) for k in range(PER_USER - 2)]  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    await producer.start()
    worker = await workers.start(quiet=True)
    rng = random.Random(12)
    try:
        for user, body in records:
            body["messageId"] = str(uuid.uuid4())
            await producer.send(topic, key=user.encode(), value=orjson.dumps(body))
        await producer.flush()
        stored, interrupted = 0, 0
        for _ in range(KILLS):  # killed as it works, again and again
            consumer = await _consume(workers.env)
            # Once it has joined the group (the last one's partitions free up when its
            # session times out) and is storing, at a random moment:
            await eventually(
                lambda n=stored + 1: _at_least(engine, "SELECT count(*) AS n FROM events", n),
                timeout=60,
            )
            await asyncio.sleep(rng.uniform(0, 0.1))
            consumer.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(consumer.wait(), 10) == -signal.SIGKILL
            stored = await _count(engine, "SELECT count(*) AS n FROM events")
            if stored == len(records):  # a fast life stored the rest: no more to interrupt
                break
            interrupted += 1
        assert interrupted >= 3  # the kills did interrupt the flow, again and again
        consumer = await _consume(workers.env)
        try:
            await eventually(
                lambda: _at_least(engine, "SELECT count(*) AS n FROM events", len(records)),
                timeout=180,
            )
            await receiver.wait_for(lambda rs: len(rs) >= USERS, timeout=180)
            await asyncio.sleep(2)  # nothing more comes
        finally:
            consumer.send_signal(signal.SIGTERM)
            await asyncio.wait_for(consumer.wait(), 30)
    finally:
        await producer.stop()
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)
        await terminate_unfinished(client, engine)

    # Every record exactly once: none lost, none stored twice (message ids are unique).
    assert await _count(engine, "SELECT count(*) AS n FROM events") == len(records)
    assert await _count(engine, "SELECT count(DISTINCT message_id) AS n FROM events") == len(
        records
    )
    # No journey entered twice, no message sent twice.
    assert await _count(engine, "SELECT count(*) AS n FROM enrollments") == USERS
    assert await _count(engine, "SELECT count(*) AS n FROM messages") == USERS
    emails = receiver.at("/email")
    assert len(emails) == USERS
    assert len({e.msg_id for e in emails}) == USERS


async def _consume(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), "consume", "--log-level", "warning",
        env={**env, "ORCHESTRATOR_REROUTE_AFTER_SECONDS": "2"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _count(engine: AsyncEngine, sql: str) -> int:
    [row] = await rows(engine, sql)
    return int(row["n"])


async def _at_least(engine: AsyncEngine, sql: str, n: int) -> bool:
    return await _count(engine, sql) >= n


async def test_a_relay_killed_again_and_again_publishes_every_fact_under_one_id(
    make_stack: StackFactory, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"facts-{uuid.uuid4().hex[:8]}"
    config = f"kafka:\n  bootstrap_servers: {kafka_broker}\n  publish: {{topic: {topic}}}\n"
    stack = await make_stack({"once": ONE_SEND}, workspace={"config": config})
    await ensure_topics({"bootstrap_servers": kafka_broker}, {topic: 4})
    await switch_on(engine)  # as the first relay would: facts are kept from now on
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": stack.services.settings.database_url or "",
           "ORCHESTRATOR_WORKSPACE": str(stack.workspace)}  # fmt: skip

    async def journeys() -> None:
        for n in range(300):
            await stack.track(f"u{n}", "Signed Up")

    flow = asyncio.create_task(journeys())
    rng = random.Random(7)
    published = 0
    for _ in range(6):  # killed as it publishes, again and again
        relay = await asyncio.create_subprocess_exec(
            str(BIN / "orchestrator"), "relay", "--log-level", "warning", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await eventually(lambda n=published: _moved_on(engine, n), timeout=60)
        await asyncio.sleep(rng.uniform(0, 0.2))
        relay.send_signal(signal.SIGKILL)
        await relay.wait()
        published = await _count(
            engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL"
        )
    await flow
    stop = asyncio.Event()
    kafka = stack.services.config.kafka
    assert kafka is not None
    last = asyncio.create_task(Relay(engine, KafkaSink(kafka)).run(stop))
    facts = await _count(engine, "SELECT count(*) AS n FROM outbox")
    await eventually(lambda: _at_least(
        engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL", facts
    ), timeout=60)  # fmt: skip
    stop.set()
    await last

    ids = {r["fact"] for r in await rows(engine, "SELECT fact FROM outbox")}
    records = await _read_at_least(kafka_broker, topic, len(ids))
    assert {r["id"] for r in records} == ids  # every fact published
    assert len(records) >= len(ids)  # a repeat, if any, carries the same id
    for record in records:
        jsonschema.validate(record, schema(record["type"]))
    assert len([r for r in records if r["type"] == "journey.entered"]) >= 150


async def _moved_on(engine: AsyncEngine, published: int) -> bool:
    """More is published than before, or there is nothing left to publish."""
    now = await _count(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL")
    left = await _count(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
    return now > published or left == 0


async def _read_at_least(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    """Every record on the topic (at least n), read until the topic has no more."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"reader-{uuid.uuid4().hex[:6]}")  # fmt: skip
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch and len(found) >= n:
                    break
                for records in batch.values():
                    found += [orjson.loads(r.value) for r in records]
    finally:
        await consumer.stop()
    return found
