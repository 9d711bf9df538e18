"""`orchestrator relay`: publishes the outbox to the workspace's topic, in order.

The outbox triggers write each fact in the transaction that stores it; the relay reads
the unpublished records in id order, publishes them (keyed by user, so a user's facts
keep their order in one partition), waits for the broker to acknowledge them all, and
only then marks them published. A relay killed between the two publishes those records
again on restart, under the same ids: consumers that dedupe by `id` see each fact once.
One relay publishes at a time (an advisory lock); others wait to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.kafka.facts import VERSION, envelope
from orchestrator.tables import outbox, outbox_state
from orchestrator.workspace import KafkaConfig

log = logging.getLogger(__name__)

LOCK = "outbox-relay"
PAGE = 500
IDLE = 0.2  # seconds between looks at an empty outbox
KEEP_PUBLISHED = timedelta(days=1)


async def switch_on(engine: AsyncEngine) -> None:
    """From now on the triggers write the outbox."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(outbox_state)
            .values(singleton=True, enabled=True)
            .on_conflict_do_update(index_elements=["singleton"], set_={"enabled": True})
        )


class Relay:
    def __init__(self, engine: AsyncEngine, kafka: KafkaConfig) -> None:
        assert kafka.publish is not None
        self.engine, self.topic = engine, kafka.publish.topic
        self.producer = AIOKafkaProducer(acks="all", **kafka.client_options())
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        await switch_on(self.engine)
        await self.producer.start()
        try:
            async with self.engine.connect() as holder:
                await self._hold_lock(holder, stop)
                while not stop.is_set():
                    if not await self.publish_page():
                        await self._forget_published()
                        await _pause(stop, IDLE)
        finally:
            await self.producer.stop()

    async def _hold_lock(self, conn: AsyncConnection, stop: asyncio.Event) -> None:
        """Wait until this relay is the one (the lock lasts as long as `conn`)."""
        while not stop.is_set():
            taken = await conn.scalar(
                text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": LOCK}
            )
            await conn.commit()
            if taken:
                return
            await _pause(stop, 1.0)

    async def publish_page(self) -> int:
        """Publish the next unpublished records, then mark them; how many."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(outbox.c.id, outbox.c.fact, outbox.c.kind, outbox.c.user_id,
                           outbox.c.occurred_at, outbox.c.data)
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(PAGE)
                )
            ).all()  # fmt: skip
        if not rows:
            return 0
        sent = []
        for row in rows:
            record = envelope(row.fact, row.kind, row.user_id, row.occurred_at, row.data)
            sent.append(
                await self.producer.send(
                    self.topic,
                    key=(row.user_id or "").encode(),
                    value=orjson.dumps(record),
                    headers=[("type", row.kind.encode()), ("version", str(VERSION).encode()),
                             ("id", row.fact.encode())],
                )
            )  # fmt: skip
        await asyncio.gather(*sent)  # every record acknowledged by the broker
        async with self.engine.begin() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([row.id for row in rows]))
                .values(published_at=datetime.now(UTC))
            )
        self.published += len(rows)
        return len(rows)

    async def _forget_published(self) -> None:
        """Published records are kept a day (to look into), then deleted."""
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.delete().where(outbox.c.published_at < datetime.now(UTC) - KEEP_PUBLISHED)
            )


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
