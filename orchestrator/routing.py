"""Routing stored events to journeys: enter users (signal-with-start) and tell running ones.

Entry is decided here, against enrollments in Postgres (trigger condition,
audience, re-entry policy, holdout), never left to Temporal's id reuse rules. Events
that running users wait for, exit on or convert on are signalled to their
workflows. Every step is idempotent, so routing an event twice (a retried request,
the sweeper) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.event_store import StoredEvent
from orchestrator.profiles import load_traits
from orchestrator.registry import JourneyRegistry, Snapshot
from orchestrator.tables import enrollments, events
from workflows import search
from workflows.assignment import in_holdout
from workflows.expressions import event_context, holds, user_context
from workflows.messages import DeployedJourney, EnterSignal, EventSignal, JourneyInput
from workflows.spec import Journey, ReEntryAfter

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def entry_refusal(journey: Journey, last: Row[Any] | None, now: datetime) -> str | None:
    """Why a user may not enter now (None: they may), given their latest enrollment."""
    if last is None:
        return None
    if last.status == "active":
        return "already in the journey"
    policy = journey.re_entry
    if policy == "never":
        return "re_entry is never and the user entered before"
    if isinstance(policy, ReEntryAfter) and now < last.entered_at + policy.after:
        return f"re_entry cooldown runs until {(last.entered_at + policy.after).isoformat()}"
    return None


class Router:
    """Routes events for one API process; uses its own connections per step."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        client: Client,
        registry: JourneyRegistry,
        task_queue: str,
        default_timezone: str,
        clock: Clock = utc_now,
        history_limit: int = 2000,
    ) -> None:
        self.engine, self.client, self.registry = engine, client, registry
        self.task_queue, self.default_timezone = task_queue, default_timezone
        self.clock, self.history_limit = clock, history_limit

    async def route(self, stored: Sequence[StoredEvent]) -> list[int]:
        """Route events (each user's in order, users concurrently); return the ids routed."""
        if not stored:
            return []
        snapshot = await self.registry.snapshot()
        by_user: dict[str, list[StoredEvent]] = defaultdict(list)
        for event in stored:
            by_user[event.user_id].append(event)
        outcomes = await asyncio.gather(
            *(self._route_user(snapshot, items) for items in by_user.values()),
            return_exceptions=True,
        )
        routed: list[int] = []
        for items, outcome in zip(by_user.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("routing events of user %s failed; the sweeper will retry",
                          items[0].user_id, exc_info=outcome)  # fmt: skip
            else:
                routed.extend(outcome)
        return routed

    async def route_and_mark(self, stored: Sequence[StoredEvent]) -> None:
        routed = await self.route(stored)
        if routed:
            async with self.engine.begin() as conn:
                await mark_routed(conn, routed, self.clock())

    async def sweep(self, older_than: timedelta, limit: int = 200) -> int:
        """Route events a crashed or failed request left unrouted; return how many."""
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                select(
                    events.c.id,
                    events.c.message_id,
                    events.c.event,
                    events.c.user_id,
                    events.c.properties,
                    events.c.timestamp,
                )
                .where(
                    events.c.routed_at.is_(None),
                    events.c.received_at < self.clock() - older_than,
                )
                .order_by(events.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            stored = [
                StoredEvent(r.id, r.message_id, r.event or "", r.user_id, r.properties, r.timestamp)
                for r in rows
            ]
            routed = await self.route(stored)
            await mark_routed(conn, routed, self.clock())
        return len(routed)

    async def _route_user(self, snapshot: Snapshot, items: list[StoredEvent]) -> list[int]:
        done = []
        for event in items:
            await self._route_one(snapshot, event)
            done.append(event.id)
        return done

    async def _route_one(self, snapshot: Snapshot, event: StoredEvent) -> None:
        triggered = snapshot.by_trigger.get(event.name, [])
        interested = snapshot.interested.get(event.name, set())
        traits: dict[str, Any] | None = None
        entered: set[str] = set()
        for deployed in triggered:
            spec = deployed.spec
            if spec.trigger.when or spec.audience:
                traits = traits if traits is not None else await self._traits(event.user_id)
                context = _context(event, traits, deployed)
                if not holds(spec.trigger.when, context) or not holds(spec.audience, context):
                    continue
            if await self._enter(deployed, event):
                entered.add(deployed.key)
        if interested - entered:
            await self._notify(snapshot, event, interested - entered)

    async def _enter(self, deployed: DeployedJourney, event: StoredEvent) -> bool:
        """Record the enrollment (or find it, on a retry) and start the workflow."""
        now = self.clock()
        async with self.engine.begin() as conn:
            enrollment = await _enrollment_for_trigger(conn, deployed.key, event.message_id)
            if enrollment is None:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                    {"k": f"{deployed.key}\x1f{event.user_id}"},
                )
                last = (
                    await conn.execute(
                        select(enrollments.c.status, enrollments.c.entered_at)
                        .where(
                            enrollments.c.journey_key == deployed.key,
                            enrollments.c.user_id == event.user_id,
                        )
                        .order_by(enrollments.c.entered_at.desc(), enrollments.c.id.desc())
                        .limit(1)
                    )
                ).one_or_none()
                if entry_refusal(deployed.spec, last, now) is not None:
                    return False
                held_out = in_holdout(deployed.key, event.user_id, deployed.spec.holdout)
                enrollment = (
                    await conn.execute(
                        insert(enrollments)
                        .values(
                            journey_key=deployed.key,
                            version=deployed.version,
                            user_id=event.user_id,
                            status="holdout" if held_out else "active",
                            trigger_message_id=event.message_id,
                            entered_at=now,
                            ended_at=now if held_out else None,
                            end_reason="holdout" if held_out else None,
                        )
                        .returning(
                            enrollments.c.id,
                            enrollments.c.status,
                            enrollments.c.version,
                            enrollments.c.entered_at,
                        )
                    )
                ).one()
        if enrollment.status != "active":
            return False
        if enrollment.version != deployed.version:
            deployed = (await self.registry.snapshot()).versions[
                (deployed.key, enrollment.version)
            ]
        await self._start(deployed, event, enrollment.id, enrollment.entered_at)
        return True

    async def _start(
        self, deployed: DeployedJourney, event: StoredEvent, enrollment_id: int, entered_at: datetime
    ) -> None:
        trigger = _signal(event)
        spec = deployed.spec
        summary = f"{spec.name} v{deployed.version} · user {event.user_id}"
        await self.client.start_workflow(
            "JourneyWorkflow",
            JourneyInput(
                journey=deployed,
                user_id=event.user_id,
                enrollment_id=enrollment_id,
                entered_at=entered_at,
                trigger=trigger,
                default_timezone=self.default_timezone,
                history_limit=self.history_limit,
            ),
            id=search.workflow_id(deployed.key, event.user_id),
            task_queue=self.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="enter",
            start_signal_args=[
                EnterSignal(enrollment_id=enrollment_id, version=deployed.version, trigger=trigger)
            ],
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search.JOURNEY_KEY, deployed.key),
                    SearchAttributePair(search.JOURNEY_VERSION, deployed.version),
                    SearchAttributePair(search.USER_ID, event.user_id),
                    SearchAttributePair(search.JOURNEY_STEP, spec.start),
                    SearchAttributePair(search.JOURNEY_STATUS, "running"),
                ]
            ),
            static_summary=summary.encode()[:200].decode(errors="ignore"),
            static_details=(
                f"**{spec.name}** (`{deployed.key}` version {deployed.version})\n\n"
                f"{spec.description.strip()}\n\n"
                f"User `{event.user_id}` entered on `{event.name}` "
                f"(message `{event.message_id}`), enrollment {enrollment_id}."
            ),
        )

    async def _notify(self, snapshot: Snapshot, event: StoredEvent, keys: set[str]) -> None:
        """Record goal conversions and signal running workflows that care about the event."""
        now = self.clock()
        goal_window = max(
            (
                d.spec.goal.within
                for (key, _), d in snapshot.versions.items()
                if key in keys and d.spec.goal is not None and d.spec.goal.event == event.name
            ),
            default=None,
        )
        scope = enrollments.c.status == "active"
        if goal_window is not None:
            scope = or_(
                scope,
                and_(
                    enrollments.c.converted_at.is_(None),
                    enrollments.c.entered_at >= now - goal_window,
                ),
            )
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        enrollments.c.id,
                        enrollments.c.journey_key,
                        enrollments.c.version,
                        enrollments.c.status,
                        enrollments.c.entered_at,
                        enrollments.c.converted_at,
                    ).where(
                        enrollments.c.user_id == event.user_id,
                        enrollments.c.journey_key.in_(sorted(keys)),
                        scope,
                    )
                )
            ).all()
            traits: dict[str, Any] | None = None
            for row in rows:
                deployed = snapshot.versions.get((row.journey_key, row.version))
                goal = deployed.spec.goal if deployed else None
                if (
                    deployed is None
                    or goal is None
                    or goal.event != event.name
                    or row.converted_at is not None
                    or now - row.entered_at > goal.within
                ):
                    continue
                if goal.where:
                    traits = traits if traits is not None else await self._traits(event.user_id)
                    if not holds(goal.where, _context(event, traits, deployed)):
                        continue
                await conn.execute(
                    update(enrollments)
                    .where(enrollments.c.id == row.id, enrollments.c.converted_at.is_(None))
                    .values(converted_at=now)
                )
        signal = _signal(event)
        for row in rows:
            if row.status == "active":
                await self._signal(search.workflow_id(row.journey_key, event.user_id), signal)

    async def _signal(self, workflow_id: str, signal: EventSignal) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id).signal("event", signal)
        except RPCError as exc:
            # The run finished between our read and the signal: nothing is waiting.
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise

    async def _traits(self, user_id: str) -> dict[str, Any]:
        return await load_traits(self.engine, user_id)


async def mark_routed(conn: AsyncConnection, ids: Sequence[int], now: datetime) -> None:
    if ids:
        await conn.execute(update(events).where(events.c.id.in_(ids)).values(routed_at=now))


async def _enrollment_for_trigger(
    conn: AsyncConnection, journey_key: str, message_id: str
) -> Row[Any] | None:
    return (
        await conn.execute(
            select(
                enrollments.c.id,
                enrollments.c.status,
                enrollments.c.version,
                enrollments.c.entered_at,
            ).where(
                enrollments.c.journey_key == journey_key,
                enrollments.c.trigger_message_id == message_id,
            )
        )
    ).one_or_none()


def _signal(event: StoredEvent) -> EventSignal:
    return EventSignal(
        message_id=event.message_id,
        name=event.name,
        properties=event.properties,
        timestamp=event.timestamp,
    )


def _context(event: StoredEvent, traits: dict[str, Any], deployed: DeployedJourney) -> dict[str, Any]:
    return {
        "user": user_context(event.user_id, traits),
        "event": event_context(event.name, event.properties, event.timestamp.isoformat()),
        "journey": {"key": deployed.key, "version": deployed.version, "name": deployed.spec.name},
    }
