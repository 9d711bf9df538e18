"""Facts out to Kafka through the transactional outbox: what a journey does (entries,
steps, decisions, messages, receipts, conversions) arrives on the topic, keyed by user,
in order, each record valid against its published schema."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import jsonschema
import orjson
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.kafka.facts import KINDS, schema
from orchestrator.kafka.relay import KafkaSink, Relay, WebhookSink
from orchestrator.stack.kafka import ensure_topics
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from tests.support.workspace import SECRETS
from tests.workflows.test_steps import WELCOME

CONVERTING = WELCOME.replace(
    "trigger: {event: Signed Up}", "trigger: {event: Signed Up}\ngoal: {event: Order Completed}"
)


async def test_every_fact_of_a_journey_is_published_in_order_and_valid(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"facts-{uuid.uuid4().hex[:8]}"
    config = f"kafka:\n  bootstrap_servers: {kafka_broker}\n  publish: {{topic: {topic}}}\n"
    stack = await make_stack({"welcome": CONVERTING}, workspace={"config": config})
    kafka = stack.services.config.kafka
    assert kafka is not None
    await ensure_topics(kafka.client_options(), {topic: 4})
    relay = Relay(engine, KafkaSink(kafka))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _enabled(engine))
        await stack.identify("u1", {"email": "u1@example.com"})
        await stack.track("u1", "Signed Up")
        [email] = await receiver.wait_for(lambda rs: len(rs) >= 1)
        await stack.track("u1", "Order Completed", {"revenue": 12})
        await stack.result("welcome", "u1")
        facts = await rows(engine, "SELECT fact FROM outbox")
        await eventually(lambda: _published(engine, len(facts)))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    records = await _read(kafka_broker, topic, len(facts))
    assert {r["id"] for r in records} == {f["fact"] for f in facts}  # each fact, once
    kinds = [r["type"] for r in records]
    for kind in ("journey.entered", "decision.made", "message.sent", "journey.step",
                 "journey.converted", "journey.ended"):  # fmt: skip
        assert kind in kinds, kinds
    assert (
        kinds.index("journey.entered")
        < kinds.index("message.sent")
        < kinds.index("journey.converted")
    )  # one user's facts, in the order they happened
    for record in records:
        jsonschema.validate(record, schema(record["type"]))
        assert record["user_id"] == "u1"
    [sent] = [r for r in records if r["type"] == "message.sent"]
    assert sent["data"]["message_id"] == email.json["data"]["message_id"]
    [ended] = [r for r in records if r["type"] == "journey.ended"]
    assert ended["data"]["status"] == "converted"


async def test_nothing_is_written_to_the_outbox_until_a_relay_switches_it_on(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"welcome": WELCOME})
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _any(engine, "SELECT 1 FROM enrollments"))
    assert await rows(engine, "SELECT 1 FROM outbox") == []


def test_every_type_has_a_schema() -> None:
    for kind in KINDS:
        document = schema(kind)
        jsonschema.Draft202012Validator.check_schema(document)
        assert document["properties"]["type"] == {"const": kind}


async def _enabled(engine: AsyncEngine) -> bool:
    return bool(await rows(engine, "SELECT 1 FROM outbox_state WHERE enabled"))


async def _published(engine: AsyncEngine, n: int) -> bool:
    published = await rows(engine, "SELECT 1 FROM outbox WHERE published_at IS NOT NULL")
    return len(published) >= n


async def _any(engine: AsyncEngine, sql: str) -> bool:
    return bool(await rows(engine, sql))


async def _read(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"reader-{uuid.uuid4().hex[:6]}")  # fmt: skip
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < n:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [orjson.loads(r.value) for r in records]
    finally:
        await consumer.stop()
    return found


async def test_without_kafka_the_facts_arrive_as_signed_webhook_batches(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    config = (f"facts_webhook:\n  url: {receiver.url}/hooks/facts\n"
              f"  signing_secret: {SECRETS['hooks']}\n  batch: 3\n")  # fmt: skip
    stack = await make_stack({"welcome": CONVERTING}, workspace={"config": config})
    hook = stack.services.config.facts_webhook
    assert hook is not None
    stop = asyncio.Event()
    task = asyncio.create_task(Relay(engine, WebhookSink(hook)).run(stop))
    try:
        await eventually(lambda: _enabled(engine))
        await stack.identify("u1", {"email": "u1@example.com"})
        await stack.track("u1", "Signed Up")
        await stack.track("u1", "Order Completed")
        await stack.result("welcome", "u1")
        facts = await rows(engine, "SELECT fact FROM outbox")
        await eventually(lambda: _published(engine, len(facts)))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    batches = receiver.at("/hooks/facts")
    assert all(b.verified for b in batches)  # Standard Webhooks signatures
    assert all(1 <= len(b.json["data"]) <= 3 for b in batches)
    records = [record for b in batches for record in b.json["data"]]
    assert {r["id"] for r in records} == {f["fact"] for f in facts}
    for record in records:
        jsonschema.validate(record, schema(record["type"]))
