"""Events in from Kafka: a record ingests exactly as the HTTP API's message does, a
duplicate changes nothing, a malformed record goes to the dead-letter topic with its
reason while the records behind it are applied, and each user's records keep their
order across partitions. On the real (local) broker, Postgres and Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.kafka.consumer import EventConsumer, lag
from orchestrator.stack.kafka import ensure_topics
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack, eventually
from tests.workflows.test_steps import WELCOME


def _kafka_workspace(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "config": f"""
kafka:
  bootstrap_servers: {bootstrap}
  consume:
    topics: [{topic}]
    group_id: group-{topic}
    source: tests
    dead_letter_topic: {topic}-dead
    max_batch: 50
"""
    }


@contextlib.asynccontextmanager
async def consuming(stack: Stack) -> AsyncIterator[EventConsumer]:
    kafka = stack.services.config.kafka
    assert kafka is not None
    assert kafka.consume is not None
    topics = {kafka.consume.topics[0]: 4, kafka.consume.dead_letter_topic: 1}
    await ensure_topics(kafka.client_options(), topics)
    consumer = EventConsumer(stack.services, kafka)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key.encode(), value=value)
        await producer.flush()
    finally:
        await producer.stop()


def message(**fields: Any) -> bytes:
    return orjson.dumps({"messageId": str(uuid.uuid4()), **fields})


async def test_records_ingest_like_the_api_duplicates_change_nothing_and_bad_ones_are_set_aside(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    stack = await make_stack({"welcome": WELCOME}, workspace=_kafka_workspace(kafka_broker, topic))
    signup = message(type="track", userId="u1", event="Signed Up")
    async with consuming(stack) as consumer:
        await produce(kafka_broker, topic, [
            ("u1", message(type="identify", userId="u1", traits={"email": "u1@example.com"})),
            ("u1", signup),
            ("u1", b"{not json"),
            ("u1", message(type="track", event="Signed Up")),  # nobody
            ("u1", signup),  # delivered twice
            ("u1", message(type="track", userId="u1", event="Browsed")),  # behind the bad ones
        ])  # fmt: skip
        await eventually(lambda: _applied(consumer, 4))
        [email] = await receiver.wait_for(lambda rs: len(rs) >= 1)
        assert email.json["data"]["recipient"]["email"] == "u1@example.com"
    stored = await rows(engine, "SELECT type, event FROM events")
    assert sorted((r["type"], r["event"] or "") for r in stored) == [
        ("identify", ""), ("track", "Browsed"), ("track", "Signed Up"),
    ]  # fmt: skip
    assert len(await rows(engine, "SELECT 1 FROM enrollments")) == 1
    dead = await _read_all(kafka_broker, f"{topic}-dead", 2)
    reasons = [(h["field"], h["reason"]) for h in dead]
    assert reasons[0][1].startswith("not valid JSON")
    assert reasons[1] == ("userId", "give userId or anonymousId")
    assert [h["offset"] for h in dead] == ["2", "3"]  # where they were, for a replay
    kafka = stack.services.config.kafka
    assert kafka is not None
    assert kafka.consume is not None
    status = await lag(kafka, kafka.consume)
    assert sum(row.committed or 0 for row in status) == 6  # every record's offset committed


async def test_each_users_records_apply_in_order_across_partitions(
    make_stack: StackFactory, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    stack = await make_stack({"welcome": WELCOME}, workspace=_kafka_workspace(kafka_broker, topic))
    users = [f"user-{n}" for n in range(40)]
    records = [
        (user, message(type="identify", userId=user, traits={"step": step}))
        for step in range(10)
        for user in users
    ]
    async with consuming(stack) as consumer:
        await produce(kafka_broker, topic, records)
        await eventually(lambda: _applied(consumer, len(records)), timeout=60)
    profiles = await rows(engine, "SELECT user_id, traits FROM profiles")
    assert {p["user_id"]: p["traits"]["step"] for p in profiles} == dict.fromkeys(users, 9)


async def _applied(consumer: EventConsumer, n: int) -> bool:
    return consumer.applied >= n


async def _read_all(bootstrap: str, topic: str, n: int) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"reader-{uuid.uuid4().hex[:6]}")  # fmt: skip
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < n:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [{k: v.decode() for k, v in r.headers} for r in records]
    finally:
        await consumer.stop()
    return found
