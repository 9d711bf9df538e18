"""Previews on past traffic: the stored events of a period replayed through a journey
(a new file or a changed version), beside the deployed version, sending and storing
nothing.

Each entered user runs the real interpreter with the journey tests' in-memory
activities (the workspace's policy, templates, channel adapters; deliveries captured),
on a simulated clock instead of Temporal's: a discrete-event loop that runs every
user's journey until it waits, then moves time to the next stored event or the next
wake-up. Arbitration starts from the messages other journeys really sent in the
period (they count towards caps) and the users' standing suppressions; profiles are
as they are now (the store keeps no history of traits). Entries follow the router's
rules (trigger, conditions, instance key, re-entry, holdout); a user still inside at
the end of the period is counted where they are.
"""

from __future__ import annotations

import asyncio
import heapq
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import ActivityError, RetryState

from orchestrator.deploy import content_of
from orchestrator.event_store import StoredEvent
from orchestrator.journey_tests.harness import (
    Enrolled,
    EntryRules,
    MemoryStore,
    captured_activities,
    webhook_client,
)
from orchestrator.simulation import MemoryArbitration
from orchestrator.sources import InvalidSource, load
from orchestrator.tables import enrollments, events, journey_versions, journeys
from orchestrator.validation import check_journey, checked_journey
from orchestrator.workspace import Workspace
from rules.decision import Contact, Decision, SendRequest, Suppressed
from rules.store import contacts_between, suppressions_of
from workflows.interpreter import JourneyInterpreter
from workflows.messages import (
    ENDED,
    GENERATION,
    DeployedJourney,
    EventSignal,
    JourneyInput,
    JourneyState,
)

STUCK = 10.0  # seconds of real time with no journey moving, before giving up


@dataclass
class Counts:
    """What one version did with the period's events."""

    label: str
    entered: int = 0
    held_out: int = 0
    steps: Counter[str] = field(default_factory=Counter)  # users who reached each step
    deferred: Counter[str] = field(default_factory=Counter)  # by the rule that held them
    suppressed: Counter[str] = field(default_factory=Counter)  # by the rule that stopped them
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (day, channel)
    outcomes: Counter[str] = field(default_factory=Counter)  # completed, exited, still inside…
    converted: int = 0  # reached the goal within its window
    step_order: list[str] = field(default_factory=list)  # the version's steps, as written
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "entered": self.entered, "held_out": self.held_out,
            "converted": self.converted,
            "steps": dict(self.steps), "deferred": dict(self.deferred),
            "suppressed": dict(self.suppressed), "outcomes": dict(self.outcomes),
            "messages": [{"day": d, "channel": c, "count": n}
                         for (d, c), n in sorted(self.messages.items())],
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime
    # Let users inside run on this long after `until` (with no more events), so that
    # recent entrants finish instead of counting as still inside.
    run_on: timedelta = timedelta(0)


# ---- the simulated runtime ---------------------------------------------------------


class _Waiter:
    __slots__ = ("condition", "deadline", "future")

    def __init__(
        self, condition: Callable[[], bool], deadline: datetime | None, future: Any
    ) -> None:
        self.condition, self.deadline, self.future = condition, deadline, future


class _ContinueAsNew(Exception):
    def __init__(self, input: JourneyInput) -> None:
        self.input = input


class _Info:
    typed_search_attributes = TypedSearchAttributes.empty

    def is_continue_as_new_suggested(self) -> bool:
        return False

    def get_current_history_length(self) -> int:
        return 0


class Clock:
    """Virtual time, and the journeys waiting on it: at most one wait per journey (its
    owner), woken when something happens to that journey or its deadline comes."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.waiting: dict[int, _Waiter] = {}  # owner -> its wait
        self._deadlines: list[tuple[datetime, int, int]] = []  # (deadline, serial, owner)
        self._serial = 0

    async def wait(
        self, owner: int, condition: Callable[[], bool], timeout: timedelta | None
    ) -> None:
        if condition():
            return
        deadline = self.now + timeout if timeout is not None else None
        waiter = _Waiter(condition, deadline, asyncio.get_running_loop().create_future())
        self.waiting[owner] = waiter
        if deadline is not None:
            self._serial += 1
            heapq.heappush(self._deadlines, (deadline, self._serial, owner))
        try:
            await waiter.future
        finally:
            if self.waiting.get(owner) is waiter:
                del self.waiting[owner]

    def poke(self, owner: int) -> None:
        """Something happened to this journey: wake it if its condition now holds."""
        waiter = self.waiting.get(owner)
        if waiter is not None and waiter.condition():
            self._wake(owner, waiter, None)

    def expire(self) -> None:
        """Wake everyone whose deadline has come."""
        while self._deadlines and self._deadlines[0][0] <= self.now:
            deadline, _, owner = heapq.heappop(self._deadlines)
            waiter = self.waiting.get(owner)
            if waiter is not None and waiter.deadline == deadline:
                self._wake(owner, waiter, TimeoutError())

    def next_deadline(self) -> datetime | None:
        while self._deadlines:
            deadline, _, owner = self._deadlines[0]
            waiter = self.waiting.get(owner)
            if waiter is not None and waiter.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)  # that wait is over
        return None

    def _wake(self, owner: int, waiter: _Waiter, error: Exception | None) -> None:
        del self.waiting[owner]
        if error is None:
            waiter.future.set_result(None)
        else:
            waiter.future.set_exception(error)


class SimulatedWorkflow:
    """The `temporalio.workflow` functions one journey's interpreter calls, on the
    simulated clock; activities are called directly (one attempt: a failure is the
    step's outcome, as a final failure would be)."""

    def __init__(self, clock: Clock, activities: dict[str, Callable[..., Any]], owner: int) -> None:
        self.clock, self.activities, self.owner = clock, activities, owner

    def now(self) -> datetime:
        return self.clock.now

    def patched(self, _id: str) -> bool:
        return True

    async def execute_activity(
        self, name: str, arg: Any = None, *, args: Iterable[Any] = (), **_: Any
    ) -> Any:
        given = list(args) or [arg]
        try:
            return await self.activities[name](*given)
        except Exception as exc:
            error = ActivityError(
                str(exc), scheduled_event_id=0, started_event_id=0, identity="preview",
                activity_type=name, activity_id=name, retry_state=RetryState.NON_RETRYABLE_FAILURE,
            )  # fmt: skip
            raise error from exc

    execute_local_activity = execute_activity

    async def wait_condition(
        self, condition: Callable[[], bool], *, timeout: timedelta | None = None, **_: Any
    ) -> None:
        await self.clock.wait(self.owner, condition, timeout)

    def upsert_search_attributes(self, *_: Any) -> None:
        return None

    def set_current_details(self, *_: Any) -> None:
        return None

    def continue_as_new(self, input: JourneyInput, **_: Any) -> None:
        raise _ContinueAsNew(input)

    def all_handlers_finished(self) -> bool:
        return True

    def info(self) -> _Info:
        return _Info()


# ---- the replay ----------------------------------------------------------------------


class _Replay:
    """One version against the period's events."""

    def __init__(
        self,
        workspace: Workspace,
        deployed: DeployedJourney,
        period: Period,
        profiles: dict[str, dict[str, Any]],
        contacts: dict[str, list[Contact]],
        suppressions: dict[str, list[Suppressed]],
        catalog: list[dict[str, Any]],
    ) -> None:
        self.workspace, self.deployed, self.period = workspace, deployed, period
        self.clock = Clock(period.since)
        self.store = MemoryStore(profiles, [deployed])
        self.arbitration = _Recorded(
            workspace.policy, traits=lambda u: profiles.get(u, {}), contacts=contacts,
            suppressions=suppressions, default_timezone=workspace.config.default_timezone,
        )  # fmt: skip
        self.profiles, self.catalog = profiles, catalog
        self.rules = EntryRules(deployed)
        self.running: dict[str, dict[str, tuple[int, JourneyInterpreter]]] = {}  # user, key
        self.tasks: list[asyncio.Task[None]] = []
        self.live = 0  # journeys not finished
        self.crashed: list[tuple[str, Exception]] = []
        self.states: list[JourneyState] = []
        self.enrollments = 0
        self.activities: dict[str, Callable[..., Any]] = {}

    async def run(self, stored: list[tuple[datetime, StoredEvent]], label: str) -> Counts:
        counts = Counts(label)
        started = asyncio.get_running_loop().time()
        async with webhook_client() as http:
            captured = captured_activities(
                self.workspace, store=self.store, arbitration=self.arbitration,
                catalog=self.catalog, http=http,
            )  # fmt: skip
            # (each activity method is named as its activity)
            self.activities = {fn.__name__: fn for fn in captured.all()}
            interesting = self.deployed.spec.interesting_events()
            for received_at, event in stored:
                await self._advance_to(received_at)
                self._route(event, interesting, counts)
            await self._advance_to(self.period.until + self.period.run_on)
            await self._settle()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self._count(counts)
        counts.seconds = asyncio.get_running_loop().time() - started
        return counts

    async def _advance_to(self, when: datetime) -> None:
        """Run everyone until they wait; wake those due before `when`; repeat."""
        while True:
            await self._settle()
            due = self.clock.next_deadline()
            if due is None or due > when:
                break
            self.clock.now = max(self.clock.now, due)
            self.clock.expire()
        self.clock.now = max(self.clock.now, when)

    async def _settle(self) -> None:
        """Until every journey is either waiting on the clock or finished."""
        spins, loop = 0, asyncio.get_running_loop()
        stuck_since, seen = loop.time(), (-1, -1)
        while len(self.clock.waiting) != self.live or self.crashed:
            if self.crashed:
                user, error = self.crashed[0]
                raise RuntimeError(f"the journey failed for user {user}: {error!r}") from error
            spins += 1
            # Everything a journey awaits here is in memory; an await that is not (an
            # HTTP client's internals) gets a moment of real time now and then.
            await asyncio.sleep(0 if spins % 1000 else 0.001)
            now = (len(self.clock.waiting), self.live)
            if now != seen:
                stuck_since, seen = loop.time(), now
            elif loop.time() - stuck_since > STUCK:
                raise RuntimeError(f"{self.live - now[0]} journey(s) wait on something other "
                                   "than the clock: the preview cannot go on")  # fmt: skip

    def _route(self, event: StoredEvent, interesting: set[str], counts: Counts) -> None:
        user, now = event.user_id, self.clock.now
        inside = self.running.get(user, {})
        # As the router: an event that enters the user is not also news to the journey.
        if self._enter(event, inside, counts):
            return
        self.rules.convert(event, self.profiles.get(user, {}), now)
        if event.name in interesting:
            signal = _signal(event)
            for owner, journey in inside.values():  # each decides if it is its key's
                if journey.state.status not in ENDED:
                    journey.on_event(signal)
                    self.clock.poke(owner)

    def _enter(
        self, event: StoredEvent, inside: dict[str, tuple[int, JourneyInterpreter]], counts: Counts
    ) -> bool:
        user = event.user_id
        instance = self.rules.instance(event, self.profiles.get(user, {}))
        if instance is None:
            return False
        current = inside.get(instance)
        running = current is not None and current[1].state.status not in ENDED
        if not self.rules.may_enter(user, self.clock.now, instance, running):
            return False
        counts.entered += 1
        if not self.rules.enter(user, self.clock.now, instance):
            counts.held_out += 1
            return True
        self._start(JourneyInput(
            journey=self.deployed, user_id=user, enrollment_id=self.enrollments + 1,
            entered_at=self.clock.now, trigger=_signal(event),
            default_timezone=self.workspace.config.default_timezone, instance=instance,
            generation=GENERATION,
        ))  # fmt: skip
        return True

    def _start(self, input: JourneyInput) -> None:
        self.enrollments += 1
        owner = self.enrollments
        runtime = SimulatedWorkflow(self.clock, self.activities, owner)
        journey = JourneyInterpreter(input, runtime)
        self.running.setdefault(input.user_id, {})[input.instance] = (owner, journey)
        self.states.append(journey.state)

        async def run() -> None:
            try:
                await journey.run()
            except _ContinueAsNew as again:  # a re-entry: a fresh run of the same instance
                self._start(again.input)
            except Exception as exc:  # a bug: the preview stops and says so
                self.crashed.append((input.user_id, exc))
            finally:
                self.live -= 1

        self.live += 1
        self.tasks.append(asyncio.create_task(run()))

    def _count(self, counts: Counts) -> None:
        counts.step_order = self.deployed.spec.step_order()
        reached: set[tuple[int, str]] = set()
        for enrollment, step, _ in self.store.visits:
            reached.add((enrollment, step))
        counts.steps.update(step for _, step in reached)
        counts.converted = self.rules.converted()
        for state in self.states:
            ended = state.status in ENDED
            counts.outcomes[
                f"ended {state.status}" if ended else f"still inside at {state.step}"
            ] += 1
        for decision, _, _ in self.arbitration.decided:
            if decision.action == "defer":
                counts.deferred.update(_rules(decision))
            elif decision.action == "suppress":
                counts.suppressed.update(_rules(decision))
        sent_at = {request.key: at for decision, request, at in self.arbitration.decided
                   if decision.action == "send"}  # fmt: skip
        for message_id, (_, rendered, delivery) in self.store.messages.items():
            if delivery == "sent":
                day = sent_at.get(message_id, self.period.since).date().isoformat()
                counts.messages[(day, rendered.channel)] += 1


class _Recorded(MemoryArbitration):
    """Memory arbitration that keeps every decision it made, with its request and time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decided: list[tuple[Decision, SendRequest, datetime]] = []

    def decide(self, request: SendRequest, now: datetime) -> Decision:
        decision = super().decide(request, now)
        self.decided.append((decision, request, now))
        return decision


def _rules(decision: Decision) -> list[str]:
    """What held or stopped a message: its failed checks, else its last. A channel's
    check says why (`channel email: cap weekly reached`); the others' details carry
    times, so their name alone groups them (`quiet hours`)."""
    checks = [c for c in decision.checks if not c.passed] or list(decision.checks[-1:])
    return [
        f"{c.rule}: {c.detail.split(' (')[0]}" if c.rule.startswith("channel ") else c.rule
        for c in checks
    ]


def _signal(event: StoredEvent) -> EventSignal:
    return EventSignal(
        message_id=event.message_id, name=event.name, properties=event.properties,
        timestamp=event.timestamp,
    )  # fmt: skip


# ---- loading the period ----------------------------------------------------------------


async def load_period(
    conn: AsyncConnection, names: set[str], period: Period
) -> list[tuple[datetime, StoredEvent]]:
    """The stored events of the period that a journey could hear, each with the moment
    it arrived (when the router acted on it), in that order."""
    rows = await conn.execute(
        select(
            events.c.id, events.c.message_id, events.c.event, events.c.user_id,
            events.c.properties, events.c.timestamp, events.c.received_at,
        )
        .where(
            events.c.received_at >= period.since,
            events.c.received_at < period.until,
            events.c.event.in_(sorted(names)),
        )
        .order_by(events.c.received_at, events.c.id)
    )  # fmt: skip
    return [(r.received_at, StoredEvent(r.id, r.message_id, r.event or "", r.user_id,
                                        r.properties, r.timestamp)) for r in rows]  # fmt: skip


async def load_profiles(conn: AsyncConnection, users: list[str]) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT u.user_id, coalesce(p.traits, '{}'::jsonb) || "
            "coalesce(c.values, '{}'::jsonb) AS traits "
            "FROM unnest(CAST(:users AS text[])) AS u(user_id) "
            "LEFT JOIN profiles p ON p.user_id = u.user_id "
            "LEFT JOIN computed_profiles c ON c.user_id = u.user_id"
        ),
        {"users": users},
    )
    return {row.user_id: dict(row.traits) for row in rows}


async def preview(
    conn: AsyncConnection,
    workspace: Workspace,
    versions: list[tuple[str, DeployedJourney]],
    period: Period,
    catalog: list[dict[str, Any]],
) -> list[Counts]:
    """Each (label, version) against the same period, one after the other."""
    names: set[str] = set()
    for _, deployed in versions:
        spec = deployed.spec
        if spec.trigger.event is None:
            raise ValueError("an audience journey enters on its schedule, not on events: "
                             "`segments preview` shows who its segment holds")  # fmt: skip
        names |= {spec.trigger.event, *spec.interesting_events()}
    stored = await load_period(conn, names, period)
    users = sorted({e.user_id for _, e in stored})
    profiles = await load_profiles(conn, users)
    keys = {deployed.key for _, deployed in versions}
    contacts = await contacts_between(conn, users, period.until, exclude_journeys=keys)
    suppressions = await suppressions_of(conn, users)
    earlier = await enrollments_before(conn, versions[0][1].key, users, period.since)
    results = []
    for label, deployed in versions:
        replay = _Replay(
            workspace, deployed, period,
            {u: dict(t) for u, t in profiles.items()}, contacts, suppressions, catalog,
        )  # fmt: skip
        for user, entry in earlier:  # they hold back entries as the router's would
            replay.rules.entries.setdefault(user, []).append(entry)
        results.append(await replay.run(stored, label))
    return results


async def enrollments_before(
    conn: AsyncConnection, journey_key: str, users: list[str], since: datetime
) -> list[tuple[str, Enrolled]]:
    """The users' enrollments in the journey from before the period, oldest first."""
    rows = await conn.execute(
        select(
            enrollments.c.user_id, enrollments.c.instance, enrollments.c.entered_at,
            enrollments.c.ended_at, enrollments.c.status,
        )
        .where(
            enrollments.c.journey_key == journey_key,
            enrollments.c.user_id.in_(users),
            enrollments.c.entered_at < since,
        )
        .order_by(enrollments.c.entered_at)
    )  # fmt: skip
    return [
        (r.user_id, Enrolled(r.entered_at, r.instance, r.status == "holdout", before=True,
                             ended_at=r.ended_at))
        for r in rows
    ]  # fmt: skip


def candidate(path: Path, workspace: Workspace) -> DeployedJourney:
    """A journey file as it would deploy (with the workspace's templates); InvalidSource
    with every problem otherwise."""
    source = load(path, display=os.path.relpath(path))
    journey, problems = check_journey(source, workspace)
    if journey is None:
        raise InvalidSource(problems)
    _, templates, _ = content_of(checked_journey(source, journey, workspace))
    return DeployedJourney(key=journey.journey, version=0, spec=journey, templates=templates)


async def deployed_version(conn: AsyncConnection, key: str) -> DeployedJourney | None:
    """The journey's current deployed version, if it has one and is active."""
    row = (
        await conn.execute(
            select(journey_versions.c.version, journey_versions.c.spec,
                   journey_versions.c.templates)
            .join(journeys, (journeys.c.key == journey_versions.c.journey_key)
                  & (journeys.c.current_version == journey_versions.c.version))
            .where(journeys.c.key == key, journeys.c.active)
        )
    ).one_or_none()  # fmt: skip
    if row is None:
        return None
    return DeployedJourney.model_validate(
        {"key": key, "version": row.version, "spec": row.spec, "templates": row.templates}
    )


def table(counts: list[Counts]) -> list[str]:
    """The versions side by side, one line per figure; a figure one version lacks is 0."""
    rows: list[tuple[str, list[int]]] = [
        ("entered", [c.entered for c in counts]),
        ("  held out", [c.held_out for c in counts]),
        ("  converted", [c.converted for c in counts]),
    ]

    def section(
        title: str, pick: Callable[[Counts], Counter[Any]], show: Callable[[Any], str]
    ) -> None:
        keys = sorted({k for c in counts for k in pick(c)}, key=str)
        rows.extend((f"{title}{show(k)}", [pick(c)[k] for c in counts]) for k in keys)

    # Steps in the order the versions list them, the first version's first.
    order = list(dict.fromkeys(step for c in counts for step in c.step_order))
    keys = sorted({k for c in counts for k in c.steps}, key=order.index)
    rows.extend((f"reached {k}", [c.steps[k] for c in counts]) for k in keys)
    section("deferred by ", lambda c: c.deferred, str)
    section("suppressed by ", lambda c: c.suppressed, str)
    section("messages ", lambda c: c.messages, lambda k: f"{k[0]} {k[1]}")
    section("", lambda c: c.outcomes, str)
    width = max(len(label) for label, _ in rows) + 2
    head = "".join(f"{c.label:>16}" for c in counts)
    lines = [" " * width + head]
    lines += [f"{label:<{width}}" + "".join(f"{n:>16,}" for n in values) for label, values in rows]
    lines.append(f"{'replayed in':<{width}}" + "".join(f"{c.seconds:>15.1f}s" for c in counts))
    return lines
