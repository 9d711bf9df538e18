"""What an experiment's journey would have earned under another allocation of its arms,
estimated from the logged assignments (`orchestrator experiments evaluate-policy`).

    parse_policy     `always:B`, `split:A=1,B=1,C=2` or `logged`, checked against the arms
    load_log         (SQL) the experiment's arms, and each assigned user's arm, the
                     propensity it had and the user's outcome
    estimate         (pure) IPS, self-normalised IPS and doubly robust estimates from
                     `orchestrator.reports.offpolicy`, beside the observed rate
    evaluate_policy  the two together, for the command line

The unit is the user, as in the reports: each assigned user counts once, in the arm of
their first assignment, with reward 1 if the assigning enrollment reached the goal
(`goal`), or had a message clicked (`click`; for a send's template variants, a message
of one of those templates). Users assigned before propensities were logged are left
out, and counted. Which experiment a key names, and its arms, are the reports'.

EvaluationError
└── an unknown journey, experiment or arm, or a policy that does not parse
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.reports import design
from orchestrator.reports.offpolicy import (
    CONFIDENCE,
    RESAMPLES,
    OffPolicyEstimate,
    OffPolicyReport,
    evaluate,
)

Reward = Literal["goal", "click"]
Kind = Literal["experiment", "template", "holdout"]


class EvaluationError(Exception):
    """The journey, experiment or an arm is unknown, or the policy does not parse."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A target allocation: shares per arm, or None for the logged policy itself."""

    text: str
    shares: dict[str, float] | None


def parse_policy(spec: str, arms: Sequence[str]) -> Policy:
    """`always:ARM`, `split:ARM=W,ARM=W,...` (weights on any scale; arms left out get
    none) or `logged`."""
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    known = f" (arms: {', '.join(arms)})" if arms else ""
    if kind == "logged" and not rest:
        return Policy(spec, None)
    if kind == "always" and rest:
        if rest not in arms:
            raise EvaluationError(f"unknown arm {rest!r}{known}")
        return Policy(spec, {a: 1.0 if a == rest else 0.0 for a in arms})
    if kind == "split" and rest:
        weights: dict[str, float] = {}
        for part in rest.split(","):
            arm, equals, weight = part.partition("=")
            arm = arm.strip()
            try:
                value = float(weight) if equals else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise EvaluationError(
                    f"bad weight in {part.strip()!r}: write ARM=WEIGHT with a weight of 0 or more"
                )
            if arm not in arms:
                raise EvaluationError(f"unknown arm {arm!r}{known}")
            if arm in weights:
                raise EvaluationError(f"arm {arm!r} appears twice in the split")
            weights[arm] = value
        total = sum(weights.values())
        if total <= 0:
            raise EvaluationError("the split's weights are all zero")
        return Policy(spec, {a: weights.get(a, 0.0) / total for a in arms})
    raise EvaluationError(
        f"bad policy {spec!r}: use always:ARM, split:ARM=WEIGHT,ARM=WEIGHT,... or logged"
    )


@dataclass(frozen=True, slots=True)
class LoggedRow:
    arm: str
    propensity: float | None
    mode: str
    reward: float


@dataclass(frozen=True, slots=True)
class ExperimentLog:
    journey: str
    experiment: str
    kind: Kind
    arms: tuple[str, ...]  # the journey's arms in order, then any only in the log
    rows: tuple[LoggedRow, ...]


_ASSIGNED = """
    SELECT a.arm, a.propensity, a.mode, EXISTS ({outcome}) AS reward
    FROM assignments AS a
    WHERE a.journey_key = :journey AND a.kind = :kind AND a.experiment_key = :key
    ORDER BY a.id
"""
# The assigning enrollment's outcome, as the reports and the bandit itself count it.
_OUTCOMES: dict[Reward, str] = {
    "goal": "SELECT 1 FROM enrollments AS e WHERE e.id = a.enrollment_id"
    " AND e.converted_at IS NOT NULL",
    "click": "SELECT 1 FROM messages AS m WHERE m.enrollment_id = a.enrollment_id"
    " AND m.clicked_at IS NOT NULL"
    " AND (a.kind <> 'template' OR m.template = ANY(CAST(:arms AS text[])))",
}


async def load_log(
    conn: AsyncConnection, *, journey: str, experiment: str, reward: Reward
) -> ExperimentLog:
    """Every user assigned in the experiment, with the propensity and their outcome."""
    try:
        spec = await design.journey_spec(conn, journey)
        kind = await design.kind_of(conn, spec, journey, experiment)
    except design.UnknownReport as exc:
        raise EvaluationError(exc.args[0]) from None
    if kind == "global_control":
        raise EvaluationError("the global control group has no allocation to change")
    configured, _, _ = design.design(spec, kind, experiment, (), global_control=0)
    query = text(_ASSIGNED.format(outcome=_OUTCOMES[reward]))
    params = {"journey": journey, "kind": kind, "key": experiment, "arms": configured}
    rows = tuple(
        LoggedRow(arm, propensity, mode, 1.0 if won else 0.0)
        for arm, propensity, mode, won in await conn.execute(query, params)
    )
    arms, _, _ = design.design(spec, kind, experiment, [r.arm for r in rows], global_control=0)
    return ExperimentLog(journey, experiment, kind, tuple(arms), rows)


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    users: int  # with a propensity
    successes: int
    observed: float | None
    mean_propensity: float | None
    target_share: float | None  # None under the logged policy


@dataclass(frozen=True, slots=True)
class PolicyEvaluation:
    journey: str
    experiment: str
    kind: Kind
    mode: str  # fixed, bandit, or "fixed and bandit" when the log holds both
    reward: Reward
    policy: Policy
    users: int  # used: assigned with a propensity
    left_out: int  # assigned before propensities were logged
    observed: float | None  # the logged policy's own rate on the users used
    arms: tuple[ArmSummary, ...]
    report: OffPolicyReport
    confidence: float
    warnings: tuple[str, ...]


def estimate(
    log: ExperimentLog,
    policy: Policy,
    *,
    reward: Reward,
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> PolicyEvaluation:
    """The policy's estimated rate from the rows that have a propensity. The reward
    model for the doubly robust estimate is each arm's observed rate (the overall rate
    for an arm nobody was logged on). For `logged`, each row's target is its own
    propensity for the arm it got; the rest is spread over the other arms as they were
    logged (only the doubly robust estimate reads it)."""
    arms = list(log.arms)
    used = [r for r in log.rows if r.propensity is not None and r.propensity > 0]
    chosen = np.array([arms.index(r.arm) for r in used], dtype=np.int64)
    propensity = np.array([r.propensity for r in used], dtype=float)
    reward_ = np.array([r.reward for r in used], dtype=float)
    users = np.bincount(chosen, minlength=len(arms))
    wins = np.bincount(chosen, weights=reward_, minlength=len(arms))
    overall = float(reward_.mean()) if len(used) else 0.0
    means = np.where(users > 0, wins / np.maximum(users, 1), overall)
    if policy.shares is None:
        target = _logged_target(chosen, propensity, users)
    else:
        target = np.array([policy.shares[a] for a in arms])
    report = evaluate(
        chosen=chosen, propensity=propensity, reward=reward_, target=target, rng=rng,
        predictions=means, resamples=resamples, confidence=confidence,
    )  # fmt: skip
    warnings = []
    if policy.shares is not None:
        unseen = [a for a in arms if policy.shares[a] > 0 and users[arms.index(a)] == 0]
        if unseen and used:
            warnings.append(
                f"no user with a propensity was logged on {', '.join(unseen)}: IPS and SNIPS "
                "cannot see what it would earn, and DR guesses it from the overall rate"
            )
    modes = sorted({r.mode for r in used})
    summaries = tuple(
        ArmSummary(
            arm=arm,
            users=int(users[i]),
            successes=int(wins[i]),
            observed=float(wins[i] / users[i]) if users[i] else None,
            mean_propensity=float(propensity[chosen == i].mean()) if users[i] else None,
            target_share=None if policy.shares is None else policy.shares[arm],
        )
        for i, arm in enumerate(arms)
    )
    return PolicyEvaluation(
        journey=log.journey,
        experiment=log.experiment,
        kind=log.kind,
        mode=" and ".join(modes) if modes else "none",
        reward=reward,
        policy=policy,
        users=len(used),
        left_out=len(log.rows) - len(used),
        observed=overall if used else None,
        arms=summaries,
        report=report,
        confidence=confidence,
        warnings=tuple(warnings),
    )


def _logged_target(
    chosen: NDArray[np.int64], propensity: NDArray[np.float64], users: NDArray[np.int64]
) -> NDArray[np.float64]:
    arms = len(users)
    target = np.zeros((len(chosen), arms))
    for i, (arm, p) in enumerate(zip(chosen, propensity, strict=True)):
        others = users.astype(float)
        others[arm] = 0
        if others.sum() == 0:  # only this arm was logged: the rest evenly
            others = np.ones(arms)
            others[arm] = 0
        if others.sum() == 0:  # an experiment of one arm
            target[i, arm] = 1.0
            continue
        target[i] = (1 - p) * others / others.sum()
        target[i, arm] = p
    return target


async def evaluate_policy(
    engine: AsyncEngine,
    *,
    journey: str,
    experiment: str,
    policy: str,
    reward: Reward = "goal",
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> PolicyEvaluation:
    """Load the experiment's log and estimate `policy` on it (the bootstrap is seeded,
    so the same log gives the same intervals)."""
    async with engine.connect() as conn:
        log = await load_log(conn, journey=journey, experiment=experiment, reward=reward)
    target = parse_policy(policy, log.arms)
    return estimate(
        log, target, reward=reward, rng=np.random.default_rng(seed), resamples=resamples
    )


def _figure(estimated: OffPolicyEstimate) -> dict[str, Any]:
    return {
        "value": estimated.value,
        "low": estimated.low,
        "high": estimated.high,
        "effective_sample_size": estimated.effective_sample_size,
    }


def as_json(evaluation: PolicyEvaluation) -> dict[str, Any]:
    """The evaluation as `--json` prints it."""
    report = evaluation.report
    estimates = {"ips": _figure(report.ips), "snips": _figure(report.snips)}
    if report.doubly_robust is not None:
        estimates["doubly_robust"] = _figure(report.doubly_robust)
    return {
        "journey": evaluation.journey,
        "experiment": evaluation.experiment,
        "kind": evaluation.kind,
        "mode": evaluation.mode,
        "reward": evaluation.reward,
        "policy": {"text": evaluation.policy.text, "shares": evaluation.policy.shares},
        "users": evaluation.users,
        "left_out_without_propensity": evaluation.left_out,
        "observed": evaluation.observed,
        "arms": [
            {
                "arm": a.arm,
                "users": a.users,
                "successes": a.successes,
                "observed": a.observed,
                "mean_propensity": a.mean_propensity,
                "target_share": a.target_share,
            }
            for a in evaluation.arms
        ],
        "confidence": evaluation.confidence,
        "resamples": report.ips.resamples,
        "estimates": estimates,
        "warnings": list(evaluation.warnings),
    }
