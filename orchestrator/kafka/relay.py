"""`orchestrator relay`: publishes the outbox to the workspace's topic (or, without
Kafka, to its facts webhook in signed batches), in order.

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
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from channels.base import DeliveryError
from channels.delivery import SignedPoster
from orchestrator.kafka.facts import VERSION, envelope
from orchestrator.tables import outbox, outbox_state
from orchestrator.workspace import FactsWebhook, KafkaConfig, WorkspaceConfig

log = logging.getLogger(__name__)

LOCK = "outbox-relay"
PAGE = 500
IDLE = 0.2  # seconds between looks at an empty outbox
KEEP_PUBLISHED = timedelta(days=1)
BACKOFF = (1.0, 2.0, 5.0, 10.0)  # waits between a batch's attempts, then the page fails


async def switch_on(engine: AsyncEngine) -> None:
    """From now on the triggers write the outbox."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(outbox_state)
            .values(singleton=True, enabled=True)
            .on_conflict_do_update(index_elements=["singleton"], set_={"enabled": True})
        )


class KafkaSink:
    """Each record to the topic, keyed by user; done once the broker acknowledged all."""

    def __init__(self, kafka: KafkaConfig) -> None:
        assert kafka.publish is not None
        self.kafka, self.topic = kafka, kafka.publish.topic

    async def __aenter__(self) -> KafkaSink:
        # (made here: aiokafka wants its client made inside the event loop)
        self.producer = AIOKafkaProducer(acks="all", **self.kafka.client_options())
        await self.producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.producer.stop()

    async def publish(self, records: list[dict[str, Any]]) -> None:
        sent = [
            await self.producer.send(
                self.topic,
                key=(record["user_id"] or "").encode(),
                value=orjson.dumps(record),
                headers=[
                    ("type", record["type"].encode()),
                    ("version", str(VERSION).encode()),
                    ("id", record["id"].encode()),
                ],
            )
            for record in records
        ]
        await asyncio.gather(*sent)


class WebhookSink:
    """The records in signed batches of `batch`, each retried until answered 2xx."""

    def __init__(self, hook: FactsWebhook) -> None:
        self.hook = hook
        self.http = httpx.AsyncClient()
        self.poster = SignedPoster(
            url=hook.url, secrets=[hook.signing_secret], client=self.http, timeout=hook.timeout
        )

    async def __aenter__(self) -> WebhookSink:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def publish(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), self.hook.batch):
            batch = records[start : start + self.hook.batch]
            # The same records make the same webhook-id: a receiver can drop a repeat.
            msg_id = f"facts_{batch[0]['id']}..{batch[-1]['id']}"
            for wait in (*BACKOFF, None):
                try:
                    await self.poster.post({"type": "facts", "data": batch}, msg_id=msg_id)
                    break
                except DeliveryError as exc:
                    if wait is None:
                        raise
                    log.warning("facts webhook: %s; trying again in %g s", exc, wait)
                    await asyncio.sleep(wait)


Sink = KafkaSink | WebhookSink


def sink_for(config: WorkspaceConfig) -> Sink | None:
    """Where the workspace's facts go: its Kafka topic, else its facts webhook."""
    if config.kafka is not None and config.kafka.publish is not None:
        return KafkaSink(config.kafka)
    if config.facts_webhook is not None:
        return WebhookSink(config.facts_webhook)
    return None


class Relay:
    def __init__(self, engine: AsyncEngine, sink: Sink) -> None:
        self.engine, self.sink = engine, sink
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        await switch_on(self.engine)
        async with self.sink, self.engine.connect() as holder:
            try:
                await self._hold_lock(holder, stop)
                await self._publish_until(stop, holder)
            finally:
                # The connection goes back to the pool: it must not keep the lock.
                try:
                    await holder.execute(text("SELECT pg_advisory_unlock_all()"))
                    await holder.commit()
                except Exception:  # the connection is gone, and the lock with it
                    log.debug("could not give the relay lock back", exc_info=True)

    async def _publish_until(self, stop: asyncio.Event, holder: AsyncConnection) -> None:
        while not stop.is_set():
            if not await _holds(holder):  # the lock went with its connection: wait again
                log.warning("the relay lost its lock; waiting to take it again")
                await self._hold_lock(holder, stop)
                continue
            try:
                published = await self.publish_page()
            except Exception:  # the broker or the webhook away: nothing was marked
                log.exception("publishing the outbox failed; trying again")
                await _pause(stop, BACKOFF[-1])
                continue
            if not published:
                await self._forget_published()
                await _pause(stop, IDLE)

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
        await self.sink.publish(
            [envelope(r.fact, r.kind, r.user_id, r.occurred_at, r.data) for r in rows]
        )
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


async def _holds(holder: AsyncConnection) -> bool:
    """Whether this relay's connection still holds the lock (it lasts as long as the
    connection: a database restart drops both)."""
    try:
        held = await holder.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                 "AND pid = pg_backend_pid() AND granted")
        )  # fmt: skip
        await holder.commit()
    except Exception:
        return False
    return bool(held)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
