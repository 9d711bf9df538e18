"""`RetrainRanking`: one training run of the ranking model, started by a Temporal schedule.

The work is one activity (`train_ranking_model`); a version goes live only if it wins
(see `orchestrator.ranking.versions`), so a bad run changes nothing users see.

Started with no input (`--when interval`, and every run scheduled before drift existed)
it trains straight away, as it always has. Started with a `RetrainInput` of `drift` or
`both`, it first asks `ranking_drift` how far live traffic has moved from the active
version's training, and trains only when that passes a threshold (outside the cooldown
after the last training), or, with `both`, when the interval has passed since the last
training. Its result says what it decided and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy

SCHEDULE_ID = "ranking-retrain"

When = Literal["interval", "drift", "both"]


@dataclass(frozen=True)
class RetrainInput:
    when: When = "interval"
    every: timedelta | None = None  # with `both`: train at least this often


@dataclass(frozen=True)
class DriftCheck:
    """What `ranking_drift` found, and the timing the decision needs."""

    status: str  # orchestrator.ranking.drift.Status
    summary: str
    since_training: timedelta | None  # since the newest version was trained (None: never)
    cooldown: timedelta

    @property
    def drifted(self) -> bool:
        return self.status == "drifted"


@dataclass(frozen=True)
class RetrainResult:
    decision: Literal["trained", "skipped"]
    reason: str
    outcome: str | None = None  # the training's own answer (version, status, why)
    drift: DriftCheck | None = None


def _ago(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def decide(run: RetrainInput, check: DriftCheck) -> tuple[bool, str]:
    """Whether to train, and why (deterministic: reads only its arguments)."""
    last = check.since_training
    if run.when == "both" and run.every is not None and (last is None or last >= run.every):
        when = "no version trained yet" if last is None else f"last trained {_ago(last)} ago"
        return True, f"the interval ({_ago(run.every)}) has passed: {when}; {check.summary}"
    if not check.drifted:
        return False, check.summary
    if last is not None and last < check.cooldown:
        return False, (
            f"{check.summary}; but a version was trained {_ago(last)} ago, within the "
            f"cooldown ({_ago(check.cooldown)})"
        )
    return True, check.summary


_TRAINING = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["NothingToTrain"])


@workflow.defn(name="RetrainRanking")
class RetrainRanking:
    @workflow.run
    async def run(self, run: RetrainInput | None = None) -> RetrainResult:
        if run is None or run.when == "interval":
            outcome = await self._train(None)
            return RetrainResult("trained", "on the interval", outcome)
        check = await workflow.execute_activity(
            "ranking_drift",
            result_type=DriftCheck,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="measure the active version's input drift",
        )
        train, reason = decide(run, check)
        workflow.set_current_details(f"{'training' if train else 'not training'}: {reason}")
        if not train:
            return RetrainResult("skipped", reason, drift=check)
        outcome = await self._train("events (scheduled: drift)" if check.drifted else None)
        return RetrainResult("trained", reason, outcome, check)

    async def _train(self, source: str | None) -> str:
        # No argument on the interval path: histories recorded before drift replay as-is.
        outcome: str = await workflow.execute_activity(
            "train_ranking_model",
            args=[] if source is None else [source],
            result_type=str,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=_TRAINING,
            summary="train a ranking model version from the stored events",
        )
        return outcome
