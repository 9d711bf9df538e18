"""`orchestrator consume`: a consumer group over the workspace's topics that ingests each
record exactly as `/v1/batch` ingests a message.

Each poll's records are validated; a record that fails goes to the dead-letter topic
with the reason and the field in its headers (and never blocks its partition); the
rest are stored, have their traits and segments kept and are routed by
`Services.ingest`, in one transaction. Offsets are committed only after that
transaction commits, so a crash or a rebalance redelivers what was not committed, and
the `messageId` (unique in the store) makes a redelivered record change nothing:
at-least-once delivery, effectively once. A partition's records are applied in their
order (Kafka keeps a key's records in one partition: key them by user).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from orchestrator.profiles import ProfileTooLarge
from orchestrator.routing import Clock, utc_now
from orchestrator.services import Services
from orchestrator.tracking import BadInput, Incoming, parse_message
from orchestrator.tracking_plan.enforcement import Violation, screen
from orchestrator.workspace import KafkaConfig, KafkaConsume

log = logging.getLogger(__name__)

# Waits after a batch could not be stored (the database away), doubling to the last.
BACKOFF = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    field: str
    reason: str


def parse_record(
    record: ConsumerRecord[bytes, bytes], *, max_bytes: int, now: datetime
) -> Incoming | DeadLetter:
    """A record as an ingestible message, or why it is not one."""
    if record.value is None:
        return DeadLetter(record, "", "the record has no value")
    if len(record.value) > max_bytes:
        return DeadLetter(record, "", f"the record is {len(record.value)} bytes; the limit is "
                                      f"{max_bytes}")  # fmt: skip
    try:
        body = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(record, "", f"not valid JSON: {exc}")
    try:
        return parse_message(body, where="", implied_type=None, max_bytes=max_bytes, now=now)
    except BadInput as exc:
        return DeadLetter(record, exc.field, exc.message)


class EventConsumer:
    """One member of the consumer group; `run()` until `stop` is set."""

    def __init__(
        self,
        services: Services,
        kafka: KafkaConfig,
        *,
        clock: Clock = utc_now,
        shared: bool = False,
    ) -> None:
        """`shared`: the services serve an API in this process too (`orchestrator dev`),
        which sweeps unrouted events and owns the router."""
        assert kafka.consume is not None
        self.services, self.kafka, self.consume = services, kafka, kafka.consume
        self.clock = clock
        self.consumer = AIOKafkaConsumer(
            *self.consume.topics,
            group_id=self.consume.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.consume.max_batch,
            session_timeout_ms=int(self.consume.session_timeout.total_seconds() * 1000),
            heartbeat_interval_ms=int(self.consume.session_timeout.total_seconds() * 1000 / 3),
            **kafka.client_options(),
        )
        self.producer = AIOKafkaProducer(acks="all", **kafka.client_options())
        self.shared = shared
        self.applied = 0  # records stored (or found stored already) and committed
        self.dead = 0

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        try:
            await self.consumer.start()
        except BaseException:
            await _stop_quietly(self.producer)
            raise
        # A consumer killed between storing and routing leaves events unrouted.
        sweeping = None if self.shared else asyncio.create_task(
            self.services.router.sweep_forever(
                timedelta(seconds=self.services.settings.reroute_after_seconds)
            )
        )  # fmt: skip
        try:
            failures = 0
            while not stop.is_set():
                try:
                    batch = await self.consumer.getmany(timeout_ms=500)
                except Exception:
                    if stop.is_set():  # the broker went first (Ctrl-C reaches it too)
                        break
                    log.exception("polling Kafka failed; trying again")
                    await asyncio.sleep(BACKOFF[-1])
                    continue
                if not batch:
                    continue
                try:
                    await self._apply(batch)
                    failures = 0
                except (CommitFailedError, IllegalStateError) as exc:
                    # A rebalance took partitions away mid-batch: their new owner gets
                    # them from the last commit (what we stored, it finds stored).
                    log.info("offsets not committed after a rebalance (%s)", exc)
                except Exception:
                    # Nothing was committed: go back and try the same records again.
                    log.exception("could not apply %d record(s); trying again",
                                  sum(len(r) for r in batch.values()))  # fmt: skip
                    held = self.consumer.assignment()
                    for tp, records in batch.items():
                        if tp in held:
                            self.consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                    failures += 1
        finally:
            if sweeping is not None:
                sweeping.cancel()
                await self.services.router.close()
            # Leaving the group tells the others to take its partitions now; a broker
            # already gone cannot be told (the session timeout does it then).
            for client in (self.consumer, self.producer):
                await _stop_quietly(client)

    async def _apply(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        now = self.clock()
        limit = self.services.settings.max_event_bytes
        good: list[tuple[ConsumerRecord[bytes, bytes], Incoming]] = []
        dead: list[DeadLetter] = []
        violations: list[Violation] = []
        plan = (await self.services.registry.snapshot()).tracking_plan.plan
        for tp in sorted(batch):
            for record in batch[tp]:
                parsed = parse_record(record, max_bytes=limit, now=now)
                if isinstance(parsed, Incoming):
                    try:  # what the plan refuses goes aside like a malformed record
                        violations += screen(plan, [parsed], batched=False)
                    except BadInput as exc:
                        parsed = DeadLetter(record, exc.field, exc.message)
                if isinstance(parsed, DeadLetter):
                    dead.append(parsed)
                else:
                    good.append((record, parsed))
        source = self.consume.source
        try:
            await self.services.ingest([item for _, item in good], source=source, now=now,
                                       violations=violations)  # fmt: skip
        except ProfileTooLarge:
            # One message would grow a profile past its bound: find it, set it aside.
            for record, item in good:
                try:
                    await self.services.ingest([item], source=source, now=now,
                                               violations=violations)  # fmt: skip
                except ProfileTooLarge as exc:
                    dead.append(DeadLetter(record, "traits", str(exc)))
        await self._dead_letters(dead)
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        self.applied += len(good)
        self.dead += len(dead)

    async def _dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            record = letter.record
            headers = [
                ("reason", letter.reason.encode()),
                ("field", letter.field.encode()),
                ("topic", record.topic.encode()),
                ("partition", str(record.partition).encode()),
                ("offset", str(record.offset).encode()),
            ]
            await self.producer.send_and_wait(
                self.consume.dead_letter_topic, value=record.value, key=record.key,
                headers=headers,
            )  # fmt: skip
            log.warning("record %s/%d@%d set aside: %s%s", record.topic, record.partition,
                        record.offset, f"{letter.field}: " if letter.field else "",
                        letter.reason)  # fmt: skip


async def _stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a client whose broker may be gone. aiokafka's consumer can let the
    cancellation of its own fetch task escape `stop()`: that one is not ours to pass on."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        log.debug("stopping a Kafka client failed", exc_info=True)


@dataclass(frozen=True)
class Lag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def behind(self) -> int:
        return max(0, self.end - (self.committed or 0))


async def lag(kafka: KafkaConfig, consume: KafkaConsume) -> list[Lag]:
    """The group's committed offset and the end of each partition of its topics."""
    consumer = AIOKafkaConsumer(
        group_id=consume.group_id, enable_auto_commit=False, **kafka.client_options()
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in consume.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p)
                for topic in consume.topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return [
            Lag(tp.topic, tp.partition, await consumer.committed(tp), ends.get(tp, 0))
            for tp in partitions
        ]
    finally:
        await consumer.stop()
