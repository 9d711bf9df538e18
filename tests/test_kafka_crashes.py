"""The consumer SIGKILLed again and again while 5,000 records flow: every record is
stored exactly once, no journey is entered twice, no message is sent twice. Real
processes (`orchestrator consume`, `orchestrator worker`), the local broker, Postgres
and the Temporal dev server."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.stack.kafka import ensure_topics
from tests.conftest import BIN
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
        stored = 0
        for _ in range(KILLS):  # killed as it works, again and again
            consumer = await _consume(workers.env)
            # Once it has joined the group (the last one's partitions free up when its
            # session times out) and is storing, at a random moment:
            await eventually(
                lambda n=stored + 1: _at_least(engine, "SELECT count(*) AS n FROM events", n),
                timeout=60,
            )
            await asyncio.sleep(rng.uniform(0, 0.4))
            consumer.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(consumer.wait(), 10) == -signal.SIGKILL
            stored = await _count(engine, "SELECT count(*) AS n FROM events")
        assert stored < len(records)  # the kills interrupted the flow
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
