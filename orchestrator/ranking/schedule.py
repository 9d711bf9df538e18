"""Retraining on a schedule: the activities the worker runs (measure drift, train), and
the Temporal schedule that starts `RetrainRanking`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.exceptions import ApplicationError

from orchestrator.access.audit import Actor
from orchestrator.ranking.config import DriftConfig, RankingMonitoringConfig
from orchestrator.ranking.drift import measure
from orchestrator.ranking.monitoring import trait_of
from orchestrator.ranking.versions import VersionError, stored_purchases, train
from orchestrator.tables import ranking_models
from workflows.retraining import SCHEDULE_ID, DriftCheck, RetrainInput, RetrainRanking, When

SCHEDULED = Actor("system", "ranking schedule")


class RankingActivities:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        events: Sequence[str],
        drift: DriftConfig | None = None,
        monitoring: RankingMonitoringConfig | None = None,
    ) -> None:
        self.engine, self.events = engine, list(events)
        self.drift = drift or DriftConfig()
        self.monitoring = monitoring or RankingMonitoringConfig()

    @activity.defn(name="train_ranking_model")
    async def train_ranking_model(self, source: str = "events (scheduled)") -> str:
        purchases, items = await stored_purchases(self.engine, self.events)
        by = self.monitoring.by  # the card's metrics by group, as `ranking train` does
        groups = await trait_of(self.engine, (p.user for p in purchases), by) if by else None
        try:
            trained = await train(
                self.engine,
                purchases,
                items,
                source=source,
                actor=SCHEDULED,
                groups=groups,
                bands=self.monitoring.bands,
                drift_window=self.drift.window,
            )
        except VersionError as exc:
            raise ApplicationError(str(exc), type="NothingToTrain", non_retryable=True) from exc
        return f"version {trained.version}: {trained.status} ({trained.reason})"

    @activity.defn(name="ranking_drift")
    async def ranking_drift(self) -> DriftCheck:
        now = datetime.now(UTC)
        async with self.engine.connect() as conn:
            drift = await measure(conn, config=self.drift, events=self.events, now=now)
            last = await conn.scalar(select(func.max(ranking_models.c.created_at)))
        return DriftCheck(
            status=drift.status,
            summary=drift.summary,
            since_training=None if last is None else now - last,
            cooldown=self.drift.cooldown,
        )


def retraining(
    every: timedelta,
    *,
    task_queue: str,
    when: When = "interval",
    check_every: timedelta = timedelta(hours=1),
) -> Schedule:
    """`interval`: a run every `every` that trains. `drift` and `both`: a run every
    `check_every` that measures drift first (`both` also trains once `every` passed)."""
    if when == "interval":
        # no input: the run trains, as runs scheduled before drift existed do
        action = ScheduleActionStartWorkflow(
            RetrainRanking.run, id="ranking-retrain-run", task_queue=task_queue
        )
    else:
        action = ScheduleActionStartWorkflow(
            RetrainRanking.run,
            RetrainInput(when=when, every=every if when == "both" else None),
            id="ranking-retrain-run",
            task_queue=task_queue,
        )
    interval = every if when == "interval" else check_every
    return Schedule(
        action=action,
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        # A run still going when the next is due: skip the next, never pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def schedule_retraining(
    client: Client,
    *,
    every: timedelta,
    task_queue: str,
    when: When = "interval",
    check_every: timedelta = timedelta(hours=1),
) -> None:
    """Create the schedule, or change it (interval, mode) if it exists."""
    schedule = retraining(every, task_queue=task_queue, when=when, check_every=check_every)
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(SCHEDULE_ID).update(replace)
