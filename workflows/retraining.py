"""`RetrainRanking`: one training run of the ranking model, started by a Temporal schedule.

The work is one activity (`train_ranking_model`); a version goes live only if it wins
(see `orchestrator.ranking.versions`), so a bad run changes nothing users see.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

SCHEDULE_ID = "ranking-retrain"


@workflow.defn(name="RetrainRanking")
class RetrainRanking:
    @workflow.run
    async def run(self) -> str:
        outcome: str = await workflow.execute_activity(
            "train_ranking_model",
            result_type=str,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RetryPolicy(
                maximum_attempts=3, non_retryable_error_types=["NothingToTrain"]
            ),
            summary="train a ranking model version from the stored events",
        )
        return outcome
