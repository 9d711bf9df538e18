"""The retention run's activity, and the Temporal schedule that starts runs."""

from __future__ import annotations

import uuid

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
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)

from orchestrator.retention.config import RetentionConfig, days
from orchestrator.retention.sweep import Cutoffs, open_run, sweep
from orchestrator.temporal import retention_queue
from rules.policy import Policy
from workflows.retention import RetentionInput, RetentionRequest, RetentionResult, RetentionRun


class RetentionActivities:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        config: RetentionConfig,
        policy: Policy,
        global_control: bool,
    ) -> None:
        self.engine, self.config, self.policy = engine, config, policy
        self.global_control = global_control

    def all(self) -> list[object]:
        return [self.retention_run]

    @activity.defn(name="retention_run")
    async def retention_run(self, request: RetentionRequest) -> RetentionResult:
        cutoffs = Cutoffs.at(
            request.now, config=self.config, policy=self.policy,
            global_control=self.global_control,
        )  # fmt: skip
        run = await open_run(
            self.engine, workflow_id=request.workflow_id, trigger=request.trigger,
            dry_run=request.dry_run, cutoffs=cutoffs,
        )  # fmt: skip
        if run.status != "finished":
            run = await sweep(
                self.engine, run, cutoffs=cutoffs, batch=self.config.batch,
                beat=lambda run: activity.heartbeat(run.counts),
            )  # fmt: skip
        return RetentionResult(run_id=run.id, dry_run=run.dry_run, counts=run.counts)


def schedule_id(task_queue: str) -> str:
    return f"retention:{task_queue}"


def retention_schedule(config: RetentionConfig, *, task_queue: str) -> Schedule:
    if config.cron is not None:
        spec = ScheduleSpec(cron_expressions=[config.cron])
        when = f"cron {config.cron} (UTC)"
    else:
        spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=config.every)])
        when = f"every {days(config.every)}"
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionRun.run,
            RetentionInput(),
            id=f"retention-run:{task_queue}",
            task_queue=retention_queue(task_queue),
        ),
        spec=spec,
        # A run still going when the next is due: skip the next, never two at once.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            paused=not config.enabled,
            note=f"retention {when}" if config.enabled else "retention.enabled is false",
        ),
    )


async def schedule_retention(client: Client, *, config: RetentionConfig, task_queue: str) -> None:
    """Create the queue's schedule, or bring it to `config` if it exists (each worker
    with upkeep does, so a changed `retention:` takes effect when workers restart)."""
    schedule = retention_schedule(config, task_queue=task_queue)
    try:
        await client.create_schedule(schedule_id(task_queue), schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id(task_queue)).update(replace)


async def start_run(
    client: Client, *, task_queue: str, dry_run: bool
) -> WorkflowHandle[RetentionRun, RetentionResult]:
    """A run now, beside the schedule's (`orchestrator retention run`)."""
    return await client.start_workflow(
        RetentionRun.run,
        RetentionInput(dry_run=dry_run, trigger="cli"),
        id=f"retention-run:{task_queue}:cli-{uuid.uuid4().hex[:12]}",
        task_queue=retention_queue(task_queue),
        static_summary="retention run" + (" (dry run)" if dry_run else ""),
    )
