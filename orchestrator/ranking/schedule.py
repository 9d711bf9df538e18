"""Retraining on a schedule: the activity the worker runs, and the Temporal schedule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

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
from orchestrator.ranking.versions import VersionError, stored_purchases, train
from workflows.retraining import SCHEDULE_ID, RetrainRanking

SCHEDULED = Actor("system", "ranking schedule")


class RankingActivities:
    def __init__(self, engine: AsyncEngine, *, events: Sequence[str]) -> None:
        self.engine, self.events = engine, list(events)

    @activity.defn(name="train_ranking_model")
    async def train_ranking_model(self) -> str:
        purchases, items = await stored_purchases(self.engine, self.events)
        try:
            trained = await train(
                self.engine, purchases, items, source="events (scheduled)", actor=SCHEDULED
            )
        except VersionError as exc:
            raise ApplicationError(str(exc), type="NothingToTrain", non_retryable=True) from exc
        return f"version {trained.version}: {trained.status} ({trained.reason})"


def retraining(every: timedelta, *, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetrainRanking.run, id="ranking-retrain-run", task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A run still going when the next is due: skip the next, never pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def schedule_retraining(client: Client, *, every: timedelta, task_queue: str) -> None:
    """Create the schedule, or change its interval if it exists."""
    schedule = retraining(every, task_queue=task_queue)
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(SCHEDULE_ID).update(replace)
