"""Workflows that keep segments moving without events: `SegmentUpkeep` and `AudienceRun`.

`SegmentUpkeep` (one per task queue, started by each worker, id `segments:<queue>`) is
the durable timer behind computed traits: it asks the `segment_upkeep` activity to
compute again the users whose values change by now (a window let an event go, a day
passed), to continue a backfill and to start audience runs that are due, then sleeps
until the next such time (at most `every`). Time comes from the workflow, so on the
time-skipping server a month passes in seconds.

`AudienceRun` enters the members of a segment at the run's moment, page by page at
the journey's `entry_rate`. Its cursor is workflow state and each entry is keyed by
(run, user) in Postgres, so a crash or a retried page resumes where it was and never
enters anyone twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.common import RetryPolicy


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class UpkeepInput(_Message):
    every: timedelta = timedelta(seconds=15)


class UpkeepRequest(_Message):
    now: datetime


class UpkeepResult(_Message):
    computed: int
    started_runs: int
    more: bool  # work is left that was due now
    next_at: datetime | None  # the next time something falls due
    every: timedelta | None = None  # the workspace's `segments.refresh_every` now


class AudienceInput(_Message):
    run_id: int
    journey_key: str
    version: int
    segment: str
    scheduled_for: datetime
    entry_rate: float
    after: str = ""  # the last user entered (continue-as-new)


class AudiencePage(_Message):
    run_id: int
    journey_key: str
    version: int
    segment: str
    scheduled_for: datetime
    after: str
    limit: int


class PageResult(_Message):
    last: str
    members: int
    started: int  # workflows started for this page (control-group entries start none)
    done: bool


class AudienceResult(_Message):
    members: int
    entered: int


ROUNDS_PER_RUN = 500
PAGES_PER_RUN = 500
MIN_PAUSE = timedelta(seconds=1)
# A worker that dies mid-activity is noticed this soon, and another takes the work over.
HEARTBEAT = timedelta(seconds=10)
_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn(name="SegmentUpkeep")
class SegmentUpkeep:
    @workflow.run
    async def run(self, input: UpkeepInput) -> None:
        for _ in range(ROUNDS_PER_RUN):
            result = await workflow.execute_activity(
                "segment_upkeep",
                UpkeepRequest(now=workflow.now()),
                result_type=UpkeepResult,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=_RETRY,
                summary="compute again the users whose traits change by now; start due runs",
            )
            if result.more:
                continue
            wake = workflow.now() + (result.every or input.every)
            if result.next_at is not None:
                wake = min(wake, result.next_at)
            await workflow.sleep(max(wake - workflow.now(), MIN_PAUSE))
        workflow.continue_as_new(input)


@workflow.defn(name="AudienceRun")
class AudienceRun:
    @workflow.run
    async def run(self, input: AudienceInput) -> AudienceResult:
        # One page a second at the entry rate (at least one user, at most 1,000 a page).
        size = max(1, min(1000, int(input.entry_rate)))
        period = timedelta(seconds=size / input.entry_rate)
        after = input.after
        for _ in range(PAGES_PER_RUN):
            began = workflow.now()
            page = await workflow.execute_activity(
                "enter_audience_page",
                AudiencePage(
                    run_id=input.run_id,
                    journey_key=input.journey_key,
                    version=input.version,
                    segment=input.segment,
                    scheduled_for=input.scheduled_for,
                    after=after,
                    limit=size,
                ),
                result_type=PageResult,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=_RETRY,
                summary=f"enter up to {size} members of {input.segment} after {after!r}",
            )
            after = page.last
            if page.done:
                break
            pause = period - (workflow.now() - began)
            if pause > timedelta(0):
                await workflow.sleep(pause)
        else:
            workflow.continue_as_new(input.model_copy(update={"after": after}))
        result: AudienceResult = await workflow.execute_activity(
            "finish_audience_run",
            input.run_id,
            result_type=AudienceResult,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=_RETRY,
        )
        return result
