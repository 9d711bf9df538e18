"""Routing stored events to journeys: enter users (signal-with-start) and tell running ones.

A trigger whose condition and audience hold enrolls the user (see `enrollment`).
Events that running users wait for, exit on or convert on are signalled to their
workflows, and goal conversions are recorded. Every step is idempotent, so routing
an event twice (a retried request, the sweeper) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.enrollment import (
    Entry,
    Installation,
    as_signal,
    enroll,
    start_journey,
    workflow_of,
)
from orchestrator.event_store import StoredEvent
from orchestrator.experiments.assignments import GlobalControl
from orchestrator.logs.ids import bind
from orchestrator.metrics.ingestion import measure_backlog, observe_routing
from orchestrator.metrics.journeys import count_conversion
from orchestrator.profiles import load_traits
from orchestrator.registry import JourneyRegistry, Snapshot
from orchestrator.tables import enrollments, events
from orchestrator.tracing.spans import annotate, child_span
from orchestrator.users.following import tell_merges
from rules.expressions import context, holds
from workflows.messages import DeployedJourney, EventSignal
from workflows.spec import in_segment

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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

    A request waits for routing only so long (`route_within`): the events are stored,
    so a slow Temporal finishes in the background, and one that does not answer at all
    is left alone (the sweeper routes its events once it answers again).
    """

    # While Temporal is known to be away, requests do not try; the sweeper probes.
    AWAY_FOR = 5.0
    # Routing still running after its request answered, at most (beyond: the sweeper's).
    MAX_BACKGROUND = 1000

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
        global_control: GlobalControl | None = None,
    ) -> None:
        self.engine, self.client, self.registry = engine, client, registry
        self.task_queue, self.default_timezone = task_queue, default_timezone
        self.clock, self.history_limit = clock, history_limit
        self.installation = Installation(engine)
        self.global_control = global_control
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._background: set[asyncio.Task[list[int]]] = set()
        self._away_until = 0.0  # monotonic times
        self._answered_at = 0.0

    async def route(self, plan: Plan, snapshot: Snapshot, *, within: float) -> None:
        """Execute the plan, waiting at most `within` seconds for it (see the class)."""
        if not plan.events or self._temporal_away() or len(self._background) > self.MAX_BACKGROUND:
            return  # stored unrouted: the sweeper routes these
        task = asyncio.create_task(self.execute(plan, snapshot))
        self._background.add(task)
        task.add_done_callback(self._finished)
        done, _ = await asyncio.wait({task}, timeout=within)
        # Slow, or away? Routing that finished a moment ago says Temporal is there.
        if not done and not self._answered_lately() and not await self._temporal_answers():
            task.cancel()

    async def close(self) -> None:
        """Stop routing in the background; what it had not finished, the sweeper does."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _finished(self, task: asyncio.Task[list[int]]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("routing failed after its request; the sweeper will retry", exc_info=error)

    def _temporal_away(self) -> bool:
        return time.monotonic() < self._away_until

    def _answered_lately(self) -> bool:
        return time.monotonic() - self._answered_at < 1.0

    async def _temporal_answers(self) -> bool:
        """Ask Temporal directly (one RPC, no retries); remember when it does not answer."""
        try:
            await self.client.service_client.check_health(timeout=timedelta(seconds=1))
        except Exception as exc:  # whatever the reason, it did not answer
            if not self._temporal_away():
                log.warning("Temporal does not answer (%s): events are stored and will be "
                            "routed when it does", exc)  # fmt: skip
            self._away_until = time.monotonic() + self.AWAY_FOR
            return False
        self._away_until, self._answered_at = 0.0, time.monotonic()
        return True

    async def plan(
        self,
        conn: AsyncConnection,
        stored: Sequence[StoredEvent],
        snapshot: Snapshot,
        *,
        fresh: bool,
    ) -> Plan:
        """Enroll users whose events trigger journeys. `fresh`: the events are new."""
        plan = Plan(events=list(stored))
        now = self.clock()
        for event in stored:
            traits: dict[str, Any] | None = None
            for deployed in snapshot.by_trigger.get(event.name, []):
                spec = deployed.spec
                if not in_segment(spec.trigger.segment, event.properties):
                    continue
                instance = ""
                if spec.trigger.when or spec.audience or spec.instance:
                    if traits is None:
                        traits = await load_traits(conn, event.user_id)
                    context = journey_context(event, traits, deployed)
                    if not holds(spec.trigger.when, context) or not holds(spec.audience, context):
                        continue
                    if spec.instance is not None:
                        # A keyed journey's trigger without its key enters no instance.
                        if (key := spec.instance_of(context)) is None:
                            continue
                        instance = key
                entry = await enroll(conn, deployed, event, now, fresh=fresh, snapshot=snapshot,
                                     global_control=self.global_control,
                                     instance=instance)  # fmt: skip
                if entry is not None:
                    plan.entered.setdefault(event.id, set()).add(deployed.key)
                    if entry.enrollment_id:
                        plan.entries.setdefault(event.id, []).append(entry)
        return plan

    @child_span("route events")  # the request's span, carried in memory into this task
    async def execute(self, plan: Plan, snapshot: Snapshot) -> list[int]:
        """Start, convert and signal (each user's events in order, users concurrently).

        Returns the ids of the events fully routed, which are marked so; a failure
        leaves its user's events for the sweeper.
        """
        by_user: dict[str, list[StoredEvent]] = defaultdict(list)
        for event in plan.events:
            by_user[event.user_id].append(event)
        annotate(events=len(plan.events), users=len(by_user))
        outcomes = await asyncio.gather(
            *(self._execute_user(plan, snapshot, items) for items in by_user.values()),
            return_exceptions=True,
        )
        if any(_unavailable(outcome) for outcome in outcomes):
            await self._temporal_answers()  # one line in the log, not one per user
        elif any(not isinstance(outcome, BaseException) for outcome in outcomes):
            self._answered_at = time.monotonic()
        routed: list[int] = []
        for items, outcome in zip(by_user.values(), outcomes, strict=True):
            if _unavailable(outcome):
                continue
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
        await measure_backlog(self.engine, now=self.clock(), older_than=older_than)
        if self._temporal_away() and not await self._temporal_answers():
            return 0
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
                    events.c.received_at,
                )
                .where(
                    events.c.routed_at.is_(None),
                    events.c.received_at < self.clock() - older_than,
                )
                .order_by(events.c.id)
                .limit(limit)
            )
            stored = [
                StoredEvent(r.id, r.message_id, r.event or "", r.user_id, r.properties,
                            r.timestamp, received_at=r.received_at)
                for r in rows
            ]  # fmt: skip
            plan = await self.plan(conn, stored, snapshot, fresh=False)
        return len(await self.execute(plan, snapshot))

    async def sweep_forever(self, older_than: timedelta) -> None:
        """Every process that ingests runs this: it routes what one of them stored and
        could not route (Temporal away, or the process died between the two), and tells
        running journeys of merges their request could not tell."""
        while True:
            await asyncio.sleep(max(1.0, older_than.total_seconds() / 2))
            try:
                if routed := await self.sweep(older_than):
                    log.warning("re-routed %d events that were left unrouted", routed)
                now = self.clock()
                if told := await tell_merges(self.engine, self.client, now=now,
                                             before=now - older_than):  # fmt: skip
                    log.warning("told the journeys of %d merges left untold", told)
            except Exception:
                log.exception("sweeping unrouted events failed; will try again")

    async def tell_merges(self, ids: Sequence[int]) -> None:
        """Tell running journeys of the merges a request made (the sweeper retries)."""
        if self._temporal_away():
            return
        try:
            await tell_merges(self.engine, self.client, now=self.clock(), ids=ids)
        except Exception as exc:
            log.warning("telling journeys of a merge failed (%s); the sweeper retries", exc)

    async def _execute_user(self, plan: Plan, snapshot: Snapshot, items: list[StoredEvent]) -> None:
        bind(user_id=items[0].user_id)  # this user's task: its log lines name them
        for index, event in enumerate(items):
            for entry in (started := plan.entries.get(event.id, [])):
                await start_journey(
                    self.client,
                    entry,
                    task_queue=self.task_queue,
                    default_timezone=self.default_timezone,
                    history_limit=self.history_limit,
                    installation_id=await self.installation.id(),
                )
            interested = snapshot.interested.get(event.name, set())
            if keys := interested - plan.entered.get(event.id, set()):
                # An enrollment a later event of this batch made came after this event:
                # it is not converted or told by it (an old `Order Completed` that puts a
                # user in `lapsed` does not also convert the win-back it starts).
                later = {e.message_id for e in items[index + 1 :]}
                await self._notify(snapshot, event, keys, entered_later_by=later)
            if started or keys:
                observe_routing(event.received_at, self.clock(), entry=bool(started))

    async def _notify(
        self,
        snapshot: Snapshot,
        event: StoredEvent,
        keys: set[str],
        *,
        entered_later_by: Collection[str] = (),
    ) -> None:
        """Record goal conversions and signal running workflows that care about the event
        (not those entered by `entered_later_by`, events that came after it)."""
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
                        enrollments.c.instance,
                        enrollments.c.user_id,
                        enrollments.c.workflow_id,
                    ).where(
                        enrollments.c.user_id == event.user_id,
                        enrollments.c.journey_key.in_(sorted(keys)),
                        enrollments.c.trigger_message_id.not_in(sorted(entered_later_by)),
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
                    or not in_segment(goal.segment, event.properties)
                    or row.converted_at is not None
                    or now - row.entered_at > goal.within
                ):
                    continue
                if goal.where or (row.instance and not goal.any_instance):
                    traits = (
                        traits if traits is not None else await load_traits(conn, event.user_id)
                    )
                    context = journey_context(event, traits, deployed)
                    if not holds(goal.where, context):
                        continue
                    # A keyed journey converts on its own instance's goal event only.
                    mine = not row.instance or goal.any_instance
                    if not mine and deployed.spec.instance_of(context) != row.instance:
                        continue
                converted = await conn.execute(
                    update(enrollments)
                    .where(enrollments.c.id == row.id, enrollments.c.converted_at.is_(None))
                    .values(
                        converted_at=now,
                        conversion_value=revenue(event.properties),
                        conversion_event_id=event.id,
                    )
                )
                if converted.rowcount:
                    count_conversion(row.journey_key)
        signal = as_signal(event)
        for row in rows:
            if row.status == "active":
                await self._signal(workflow_of(row), signal)

    async def _signal(self, workflow_id: str, signal: EventSignal) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id).signal("event", signal)
        except RPCError as exc:
            # The run finished between our read and the signal: nothing is waiting.
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


def revenue(properties: dict[str, Any]) -> float | None:
    """What a goal event says the conversion was worth: `revenue`, else `value`."""
    for name in ("revenue", "value"):
        amount = properties.get(name)
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            continue
        if math.isfinite(amount) and 0 <= amount <= 1e12:
            return float(amount)
    return None


def _unavailable(outcome: object) -> bool:
    return isinstance(outcome, RPCError) and outcome.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
    )


def journey_context(
    event: StoredEvent, traits: dict[str, Any], deployed: DeployedJourney
) -> dict[str, Any]:
    journey = {"key": deployed.key, "version": deployed.version, "name": deployed.spec.name}
    return context(event.user_id, traits, event, journey)
