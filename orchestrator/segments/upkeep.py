"""The activities behind `SegmentUpkeep` and `AudienceRun` (see `workflows.segments`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]
from sqlalchemy import func, select, union, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from orchestrator.enrollment import Entry, enroll, start_journey
from orchestrator.event_store import StoredEvent
from orchestrator.migration import PAGE as MIGRATION_PAGE
from orchestrator.migration import move_users
from orchestrator.profiles import load_traits
from orchestrator.registry import Snapshot
from orchestrator.routing import Router, journey_context
from orchestrator.segments import service
from orchestrator.segments.keeper import due_users, keep_current, store_changes
from orchestrator.tables import (
    audience_runs,
    computed_profiles,
    enrollments,
    events,
    profiles,
    segment_definitions,
    segment_memberships,
)
from orchestrator.temporal import segments_queue
from rules.expressions import holds
from rules.policy import Policy
from workflows.segments import (
    AudienceInput,
    AudiencePage,
    AudienceResult,
    PageResult,
    UpkeepInput,
    UpkeepRequest,
    UpkeepResult,
)
from workflows.spec import AUDIENCE_EVENT, Schedule

log = logging.getLogger(__name__)

# A run missed by up to this much (the workers were down) still runs, late.
CATCH_UP = timedelta(hours=1)
BATCH = 500  # users computed per transaction
BUDGET = timedelta(seconds=20)  # of work per activity call, so that it reports progress
STARTS_IN_FLIGHT = 32


class SegmentActivities:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        client: Client,
        router: Router,
        policy: Policy,
        task_queue: str,
        default_timezone: str,
        refresh_every: timedelta,
    ) -> None:
        self.engine, self.client, self.router, self.policy = engine, client, router, policy
        self.task_queue, self.default_timezone = task_queue, default_timezone
        self.refresh_every = refresh_every

    def all(self) -> list[object]:
        return [self.segment_upkeep, self.enter_audience_page, self.finish_audience_run]

    # ---- upkeep ----------------------------------------------------------------

    @activity.defn(name="segment_upkeep")
    async def segment_upkeep(self, request: UpkeepRequest) -> UpkeepResult:
        now = request.now
        snapshot = await self.router.registry.snapshot()
        started = await self._start_due_runs(snapshot, now)
        # Users of earlier journey versions that a newly deployed one takes in (`migrate`).
        moved = await move_users(self.engine, self.client)
        computed, more = 0, moved >= MIGRATION_PAGE
        deadline = asyncio.get_running_loop().time() + BUDGET.total_seconds()
        while asyncio.get_running_loop().time() < deadline:
            activity.heartbeat()
            done = await self._compute_due(snapshot, now)
            done += await self._backfill(snapshot, now)
            computed += done
            if not done:
                break
        else:
            more = True
        async with self.engine.connect() as conn:
            next_due = await conn.scalar(select(func.min(computed_profiles.c.next_at)))
        upcoming = [t for t in (next_due, _next_run(snapshot, now, self.default_timezone)) if t]
        return UpkeepResult(
            computed=computed, started_runs=started, more=more,
            next_at=min(upcoming, default=None), every=self.refresh_every,
        )  # fmt: skip

    async def _compute_due(self, snapshot: Snapshot, now: datetime) -> int:
        """Users whose values change by now with no event."""
        async with self.engine.begin() as conn:
            users = await due_users(conn, now, BATCH)
            if not users:
                return 0
            routable = await self._keep(conn, snapshot, users, now)
            plan = await self.router.plan(conn, routable, snapshot, fresh=True)
        await self.router.execute(plan, snapshot)
        return len(users)

    async def _backfill(self, snapshot: Snapshot, now: datetime) -> int:
        """Bring the next users to the definitions in force (after a deploy changed them)."""
        current = snapshot.computed
        if not current.version:
            return 0
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        segment_definitions.c.backfill_cursor, segment_definitions.c.backfilled_at
                    )
                    .where(segment_definitions.c.version == current.version)
                    .with_for_update(skip_locked=True)
                )
            ).one_or_none()
            if row is None or row.backfilled_at is not None:
                return 0
            after = row.backfill_cursor or ""
            everyone = union(
                *(
                    select(column.label("user_id"))
                    .where(column > after)
                    .distinct()
                    .order_by(column)
                    .limit(BATCH)
                    for column in (profiles.c.user_id, computed_profiles.c.user_id,
                                   events.c.user_id)
                )
            ).subquery()  # fmt: skip
            users = list(
                (
                    await conn.execute(
                        select(everyone.c.user_id).order_by(everyone.c.user_id).limit(BATCH)
                    )
                ).scalars()
            )
            # Users that ingestion computed under this version since need nothing.
            current_already = set(
                (
                    await conn.execute(
                        select(computed_profiles.c.user_id).where(
                            computed_profiles.c.user_id.in_(users),
                            computed_profiles.c.version == current.version,
                        )
                    )
                ).scalars()
            )
            stale = [user for user in users if user not in current_already]
            routable = await self._keep(conn, snapshot, stale, now) if stale else []
            await conn.execute(
                update(segment_definitions)
                .where(segment_definitions.c.version == current.version)
                .values(
                    backfill_cursor=users[-1] if users else after,
                    backfilled_at=now if len(users) < BATCH else None,
                )
            )
            plan = await self.router.plan(conn, routable, snapshot, fresh=True)
        await self.router.execute(plan, snapshot)
        if len(users) < BATCH:
            log.info("traits and segments version %d: every user computed", current.version)
        return len(stale) or (1 if users else 0)  # more pages may follow

    async def _keep(
        self, conn: AsyncConnection, snapshot: Snapshot, users: list[str], now: datetime
    ) -> list[StoredEvent]:
        changes = await keep_current(conn, snapshot.computed, users, now)
        return await store_changes(conn, changes, snapshot=snapshot, policy=self.policy, now=now)

    # ---- audience runs -----------------------------------------------------------

    async def _start_due_runs(self, snapshot: Snapshot, now: datetime) -> int:
        """Start each audience journey's run that is due and not yet done (idempotent)."""
        started = 0
        for deployed, deployed_at in snapshot.audiences:
            audience = deployed.spec.trigger.audience
            assert audience is not None
            due = _last_fire(audience.schedule, now, self.default_timezone)
            # Late by up to CATCH_UP (workers were down), never before it was deployed.
            if due is None or now - due > CATCH_UP or due < deployed_at:
                continue
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(audience_runs)
                    .values(
                        journey_key=deployed.key,
                        version=deployed.version,
                        segment_key=audience.segment,
                        scheduled_for=due,
                    )
                    .on_conflict_do_nothing()
                )
                run = (
                    await conn.execute(
                        select(audience_runs).where(
                            audience_runs.c.journey_key == deployed.key,
                            audience_runs.c.scheduled_for == due,
                        )
                    )
                ).one()
            if run.finished_at is not None:
                continue
            try:
                await self.client.start_workflow(
                    "AudienceRun",
                    AudienceInput(
                        run_id=run.id,
                        journey_key=run.journey_key,
                        version=run.version,
                        segment=run.segment_key,
                        scheduled_for=due,
                        entry_rate=audience.entry_rate,
                    ),
                    id=audience_workflow_id(deployed.key, due),
                    task_queue=segments_queue(self.task_queue),
                    # Running or done: nothing to do; failed or terminated: run it again
                    # (entries already made are found again, never repeated).
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    static_summary=f"{deployed.spec.name}: everyone in {audience.segment}"[:200],
                )
                started += 1
            except WorkflowAlreadyStartedError:
                pass  # running, or done (its last activity finishes the run's row)
        return started

    @activity.defn(name="enter_audience_page")
    async def enter_audience_page(self, page: AudiencePage) -> PageResult:
        """Enter the next members (in user order, as they were at the run's moment)."""
        snapshot = await self.router.registry.snapshot()
        deployed = snapshot.versions[(page.journey_key, page.version)]
        if not any(d.key == page.journey_key for d, _ in snapshot.audiences):
            # Retired (or no longer an audience journey) mid-run: nobody else enters.
            log.warning("journey %s was retired: its run %d stops", page.journey_key, page.run_id)
            return PageResult(last=page.after, members=0, started=0, done=True)
        at = page.scheduled_for
        now = datetime.now(at.tzinfo)
        entries: list[Entry] = []
        async with self.engine.begin() as conn:
            found = await service.members(
                conn, page.segment, at=at, after=page.after, limit=page.limit
            )
            members = [member["user_id"] for member in found]
            for done, user_id in enumerate(members):
                if done % 50 == 0:
                    activity.heartbeat()  # a long page is alive: no second attempt beside it
                trigger = StoredEvent(
                    id=0,
                    message_id=f"audience/{page.run_id}/{user_id}",
                    name=AUDIENCE_EVENT,
                    user_id=user_id,
                    properties={"segment": page.segment, "run": page.run_id},
                    timestamp=at,
                )
                if deployed.spec.audience and not holds(
                    deployed.spec.audience,
                    journey_context(trigger, await load_traits(conn, user_id), deployed),
                ):
                    continue
                entry = await enroll(conn, deployed, trigger, now, fresh=False,
                                     snapshot=snapshot,
                                     global_control=self.router.global_control)  # fmt: skip
                if entry is not None and entry.enrollment_id:
                    entries.append(entry)
        await self._start(entries)
        return PageResult(
            last=members[-1] if members else page.after,
            members=len(members),
            started=len(entries),
            done=len(members) < page.limit,
        )

    async def _start(self, entries: list[Entry]) -> None:
        gate = asyncio.Semaphore(STARTS_IN_FLIGHT)
        installation = await self.router.installation.id()

        async def one(entry: Entry) -> None:
            async with gate:
                activity.heartbeat()
                await start_journey(
                    self.client, entry, task_queue=self.task_queue,
                    default_timezone=self.default_timezone,
                    history_limit=self.router.history_limit, installation_id=installation,
                )  # fmt: skip

        await asyncio.gather(*(one(entry) for entry in entries))

    @activity.defn(name="finish_audience_run")
    async def finish_audience_run(self, run_id: int) -> AudienceResult:
        async with self.engine.begin() as conn:
            run = (
                await conn.execute(select(audience_runs).where(audience_runs.c.id == run_id))
            ).one()
            prefix = f"audience/{run_id}/"  # "0" follows "/": the range is one run's keys
            members = await conn.scalar(
                select(func.count()).where(
                    segment_memberships.c.segment_key == run.segment_key,
                    service.member_at(run.scheduled_for),
                )
            )
            entered = await conn.scalar(
                select(func.count()).where(
                    enrollments.c.journey_key == run.journey_key,
                    enrollments.c.trigger_message_id >= prefix,
                    enrollments.c.trigger_message_id < prefix[:-1] + "0",
                )
            )
            await conn.execute(
                update(audience_runs)
                .where(audience_runs.c.id == run_id)
                .values(finished_at=func.now(), members=members, entered=entered)
            )
        return AudienceResult(members=members or 0, entered=entered or 0)


async def start_upkeep(client: Client, task_queue: str, *, every: timedelta) -> None:
    """Start the queue's `SegmentUpkeep` unless it runs already (each worker asks)."""
    await client.start_workflow(
        "SegmentUpkeep",
        UpkeepInput(every=every),
        id=f"segments:{task_queue}",
        task_queue=segments_queue(task_queue),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary="keeps computed traits and segments current as time passes",
    )


def audience_workflow_id(journey_key: str, at: datetime) -> str:
    return f"audience:{journey_key}:{at.isoformat()}"


def _zone(schedule: Schedule, default: str) -> ZoneInfo:
    return ZoneInfo(schedule.timezone or default)


def _last_fire(schedule: Schedule, now: datetime, default_timezone: str) -> datetime | None:
    """The schedule's latest time at or before `now`.

    Cron times are wall-clock times in the zone, taken at their first occurrence: when
    the clocks go back, 01:30 happens twice but runs once (and the same instant names
    the run both times, so it is not repeated)."""
    zone = _zone(schedule, default_timezone)
    if schedule.at is not None:
        at = schedule.at if schedule.at.tzinfo else schedule.at.replace(tzinfo=zone)
        return at if at <= now else None
    assert schedule.cron is not None
    wall = now.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    if not croniter.match(schedule.cron, wall):
        wall = croniter(schedule.cron, wall).get_prev(datetime)
    fired = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    return fired if fired <= now else None


def _next_run(snapshot: Snapshot, now: datetime, default_timezone: str) -> datetime | None:
    """When the next audience run falls due, of every audience journey."""
    times = []
    for deployed, _ in snapshot.audiences:
        assert deployed.spec.trigger.audience is not None
        schedule = deployed.spec.trigger.audience.schedule
        zone = _zone(schedule, default_timezone)
        if schedule.at is not None:
            at = schedule.at if schedule.at.tzinfo else schedule.at.replace(tzinfo=zone)
            if at > now:
                times.append(at)
        else:
            assert schedule.cron is not None
            wall = now.astimezone(zone).replace(tzinfo=None)
            following: datetime = croniter(schedule.cron, wall).get_next(datetime)
            times.append(following.replace(tzinfo=zone, fold=0).astimezone(UTC))
    return min(times, default=None)
