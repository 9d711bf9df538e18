"""`RetrainRanking`: when a run trains (interval, drift, both), and histories recorded
before drift existed still replaying."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.ranking.schedule import RankingActivities
from orchestrator.temporal import SANDBOX
from workflows.retraining import DriftCheck, RetrainInput, RetrainRanking, RetrainResult, decide

# interval_v1: a scheduled run recorded before drift (no input, result a string)
HISTORIES = Path(__file__).parent / "histories" / "retraining"
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def check(status: str, since: timedelta | None) -> DriftCheck:
    return DriftCheck(status=status, summary=f"<{status}>", since_training=since, cooldown=DAY)


@pytest.mark.parametrize(
    ("run", "found", "train", "reason"),
    [
        (RetrainInput("drift"), check("steady", 3 * DAY), False, "<steady>"),
        (RetrainInput("drift"), check("drifted", 3 * DAY), True, "<drifted>"),
        (RetrainInput("drift"), check("not enough traffic", None), False, "<not enough traffic>"),
        (RetrainInput("drift"), check("drifted", 2 * HOUR), False,
         "<drifted>; but a version was trained 2.0 h ago, within the cooldown (24.0 h)"),
        (RetrainInput("both", every=7 * DAY), check("drifted", 2 * HOUR), False,
         "<drifted>; but a version was trained 2.0 h ago, within the cooldown (24.0 h)"),
        (RetrainInput("both", every=7 * DAY), check("steady", 8 * DAY), True,
         "the interval (7.0 d) has passed: last trained 8.0 d ago; <steady>"),
        (RetrainInput("both", every=7 * DAY), check("no active version", None), True,
         "the interval (7.0 d) has passed: no version trained yet; <no active version>"),
        (RetrainInput("both", every=7 * DAY), check("steady", 6 * DAY), False, "<steady>"),
    ],
)  # fmt: skip
def test_when_a_run_trains(run: RetrainInput, found: DriftCheck, train: bool, reason: str) -> None:
    assert decide(run, found) == (train, reason)


def replayer() -> Replayer:
    return Replayer(
        workflows=[RetrainRanking],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
    )


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_retraining_histories_still_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_fresh_drift_run_replays_and_says_why_it_did_not_train(
    engine: AsyncEngine, time_skipping: WorkflowEnvironment
) -> None:
    ranking = RankingActivities(engine, events=["Order Completed"])
    queue = f"retrain-{uuid.uuid4()}"
    client = time_skipping.client
    async with Worker(client, task_queue=queue, workflows=[RetrainRanking],
                      activities=[ranking.train_ranking_model, ranking.ranking_drift]):  # fmt: skip
        handle = await client.start_workflow(
            RetrainRanking.run, RetrainInput("drift"), id=f"r-{uuid.uuid4()}", task_queue=queue
        )
        result = await handle.result()
        history = await handle.fetch_history()
    assert result == RetrainResult(
        "skipped",
        "no active version: nothing to measure drift against",
        drift=DriftCheck("no active version", "no active version: nothing to measure drift "
                         "against", since_training=None, cooldown=DAY),
    )  # fmt: skip
    await replayer().replay_workflow(history)
    if name := os.environ.get("RECORD_HISTORY"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())
