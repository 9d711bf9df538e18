"""`RetentionRun`: one retention run, started by the workspace's Temporal schedule
(`retention:<task queue>`) or by `orchestrator retention run`.

The work is one activity (`retention_run`) that heartbeats after each page; its
progress lives in Postgres (the run's row, written with each page), so an attempt
after a crash or a lost worker goes on from the last page. `now` is the workflow's,
fixed when the run starts: every attempt deletes up to the same cutoffs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.common import RetryPolicy

# A worker that dies mid-run is noticed this soon, and another attempt takes over.
HEARTBEAT = timedelta(minutes=1)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class RetentionInput(_Message):
    dry_run: bool = False
    trigger: str = "schedule"  # schedule | cli


class RetentionRequest(_Message):
    workflow_id: str
    now: datetime
    dry_run: bool
    trigger: str


class RetentionResult(_Message):
    run_id: int
    dry_run: bool
    counts: dict[str, dict[str, int]]


@workflow.defn(name="RetentionRun")
class RetentionRun:
    @workflow.run
    async def run(self, input: RetentionInput) -> RetentionResult:
        request = RetentionRequest(
            workflow_id=workflow.info().workflow_id,
            now=workflow.now(),
            dry_run=input.dry_run,
            trigger=input.trigger,
        )
        result: RetentionResult = await workflow.execute_activity(
            "retention_run",
            request,
            result_type=RetentionResult,
            start_to_close_timeout=timedelta(hours=12),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5)
            ),
            summary="delete (or blank) what is past its retention period, in batches",
        )
        return result
