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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Row,
    Text,
    and_,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
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


def blocking_enrollments(journey: Journey, now: datetime) -> ColumnElement[bool]:
    """Which earlier enrollments of the same user keep them from entering now."""
    policy = journey.re_entry
    if policy == "never":
        return true()  # any earlier entry
    if isinstance(policy, ReEntryAfter):
        return or_(enrollments.c.status == "active", enrollments.c.entered_at > now - policy.after)
    return enrollments.c.status == "active"


@dataclass(frozen=True)
class Entry:
    """A user entered a journey: the workflow to start once the enrollment is committed."""

    deployed: DeployedJourney
    event: StoredEvent
    enrollment_id: int
    entered_at: datetime


@dataclass
class Plan:
    """What routing a set of events needs after the enrollments are committed."""

    events: list[StoredEvent] = field(default_factory=list)
    entries: dict[int, list[Entry]] = field(default_factory=dict)  # by event id
    entered: dict[int, set[str]] = field(default_factory=dict)  # journey keys, by event id


class Router:
    """Decides entries inside the caller's transaction, then talks to Temporal.

    `plan()` runs in the transaction that stored the events (or read them back, for
    the sweeper): entries are decided and enrollments inserted there, so a request
    costs one transaction. `execute()` runs after commit: it starts workflows, records
    goal conversions and signals running users, then marks the events routed.
    """

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
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def plan(
        self, conn: AsyncConnection, stored: Sequence[StoredEvent], snapshot: Snapshot,
        *, fresh: bool,
    ) -> Plan:
        """Enroll users whose events trigger journeys. `fresh`: the events are new."""
        plan = Plan(events=list(stored))
        now = self.clock()
        for event in stored:
            traits: dict[str, Any] | None = None
            for deployed in snapshot.by_trigger.get(event.name, []):
                spec = deployed.spec
                if spec.trigger.when or spec.audience:
                    if traits is None:
                        traits = await load_traits(conn, event.user_id)
                    context = _context(event, traits, deployed)
                    if not holds(spec.trigger.when, context) or not holds(spec.audience, context):
                        continue
                entry = await self._enroll(conn, deployed, event, now, fresh=fresh)
                if entry is not None:
                    plan.entered.setdefault(event.id, set()).add(deployed.key)
                    if entry.enrollment_id:
                        plan.entries.setdefault(event.id, []).append(entry)
        return plan

    async def execute(self, plan: Plan, snapshot: Snapshot) -> list[int]:
        """Start, convert and signal (each user's events in order, users concurrently).

        Returns the ids of the events fully routed, which are marked so; a failure
        leaves its user's events for the sweeper.
        """
        by_user: dict[str, list[StoredEvent]] = defaultdict(list)
        for event in plan.events:
            by_user[event.user_id].append(event)
        outcomes = await asyncio.gather(
            *(self._execute_user(plan, snapshot, items) for items in by_user.values()),
            return_exceptions=True,
        )
        routed: list[int] = []
        for items, outcome in zip(by_user.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("routing events of user %s failed; the sweeper will retry",
                          items[0].user_id, exc_info=outcome)  # fmt: skip
            else:
                routed.extend(e.id for e in items)
        if routed:
            async with self._autocommit.connect() as conn:
                await conn.execute(
                    update(events).where(events.c.id.in_(routed)).values(routed_at=self.clock())
                )
        return routed

    async def sweep(self, older_than: timedelta, limit: int = 200) -> int:
        """Route events a crashed or failed request left unrouted; return how many."""
        snapshot = await self.registry.snapshot()
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
            )
            stored = [
                StoredEvent(r.id, r.message_id, r.event or "", r.user_id, r.properties, r.timestamp)
                for r in rows
            ]
            plan = await self.plan(conn, stored, snapshot, fresh=False)
        return len(await self.execute(plan, snapshot))

    async def _execute_user(
        self, plan: Plan, snapshot: Snapshot, items: list[StoredEvent]
    ) -> None:
        for event in items:
            for entry in plan.entries.get(event.id, []):
                await self._start(entry)
            interested = snapshot.interested.get(event.name, set())
            if keys := interested - plan.entered.get(event.id, set()):
                await self._notify(snapshot, event, keys)

    async def _enroll(
        self, conn: AsyncConnection, deployed: DeployedJourney, event: StoredEvent,
        now: datetime, *, fresh: bool,
    ) -> Entry | None:
        """Insert the enrollment if the user may enter; on a re-route, find it again.

        An `Entry` with enrollment id 0 means "entered the control group": no workflow.
        """
        if not fresh:
            found = await _enrollment_for_trigger(conn, deployed.key, event.message_id)
            if found is not None:
                if found.status != "active":
                    return None
                if found.version != deployed.version:
                    deployed = (await self.registry.snapshot()).versions[
                        (deployed.key, found.version)
                    ]
                return Entry(deployed, event, found.id, found.entered_at)
        spec = deployed.spec
        held_out = in_holdout(deployed.key, event.user_id, spec.holdout)
        if spec.holdout:
            # Control-group rows are not covered by the one-active-enrollment index, so
            # two racing triggers are serialised by a lock instead.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"{deployed.key}\x1f{event.user_id}"},
            )
        earlier = (
            select(enrollments.c.id)
            .where(
                enrollments.c.journey_key == deployed.key,
                enrollments.c.user_id == event.user_id,
                blocking_enrollments(spec, now),
            )
            .exists()
        )
        values = select(
            literal(deployed.key), literal(deployed.version), literal(event.user_id),
            literal("holdout" if held_out else "active"), literal(event.message_id),
            literal(now), literal(now if held_out else None, DateTime(timezone=True)),
            literal("holdout" if held_out else None, Text),
        ).where(~earlier)
        # A racing trigger for the same user loses on the one-active-enrollment index.
        row = (
            await conn.execute(
                insert(enrollments)
                .from_select(
                    ["journey_key", "version", "user_id", "status", "trigger_message_id",
                     "entered_at", "ended_at", "end_reason"],
                    values,
                )
                .on_conflict_do_nothing()
                .returning(enrollments.c.id, enrollments.c.entered_at)
            )
        ).one_or_none()
        if row is None:
            return None
        return Entry(deployed, event, 0 if held_out else row.id, row.entered_at)

    async def _start(self, entry: Entry) -> None:
        deployed, event = entry.deployed, entry.event
        enrollment_id, entered_at = entry.enrollment_id, entry.entered_at
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
                    traits = traits if traits is not None else await load_traits(conn, event.user_id)
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
