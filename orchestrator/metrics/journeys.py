"""Journeys entered, ended and converted, and arbitration decisions with their latency.

Journey keys are label values: they are bounded by the journeys a workspace deploys.
Arbitration reasons are a fixed vocabulary (`reason_of`), not the decisions' own text,
which names journeys, caps and times.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec

from prometheus_client import Counter, Histogram

from rules.decision import GLOBAL_CONTROL, RULE, Decision

ENTERED = Counter(
    "orchestrator_journeys_entered",
    "Users who entered a journey, by journey key and group (treatment; holdout: the "
    "journey's control group, who get no workflow)",
    ["journey", "group"],
)
ENDED = Counter(
    "orchestrator_journeys_ended",
    "Journeys that ended, by journey key and status (completed, exited, converted, failed)",
    ["journey", "status"],
)
CONVERTED = Counter(
    "orchestrator_journeys_converted",
    "Goal conversions recorded, by journey key (each enrollment converts once)",
    ["journey"],
)
DECISIONS = Counter(
    "orchestrator_arbitration_decisions",
    "Arbitration decisions by outcome (send, defer, suppress, error) and reason (none, "
    "global_control, rule, conflict_window, caps, quiet_hours, unreachable, suppressed, "
    "consent, duplicate, no_channel, error)",
    ["outcome", "reason"],
)
DECISION_SECONDS = Histogram(
    "orchestrator_arbitration_duration_seconds",
    "Time to decide and record one arbitration (the per-user lock included)",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def count_entry(journey: str, *, holdout: bool) -> None:
    ENTERED.labels(journey, "holdout" if holdout else "treatment").inc()


def count_end(journey: str, status: str) -> None:
    ENDED.labels(journey, status).inc()


def count_conversion(journey: str) -> None:
    CONVERTED.labels(journey).inc()


_WORDS = {GLOBAL_CONTROL: "global_control", "conflict window": "conflict_window",
          "caps": "caps", "quiet hours": "quiet_hours"}  # fmt: skip
# A channel check's detail starts with what stopped it (rules.decision._channel_failures).
_CHANNEL_WORDS = (("not reachable", "unreachable"), ("suppressed", "suppressed"),
                  ("duplicate", "duplicate"), ("cap ", "caps"))  # fmt: skip


def reason_of(decision: Decision) -> str:
    """Why, in one word of a fixed vocabulary: the first check that failed; for a
    deferral without one (held for its conflict window), its last check; for a send, none."""
    failed = [check for check in decision.checks if not check.passed]
    if not failed and decision.action == "send":
        return "none"
    shown = failed[0] if failed else decision.checks[-1] if decision.checks else None
    if shown is None:
        return "no_channel"
    if shown.rule.startswith(RULE):
        return "rule"
    if shown.rule.startswith("channel "):
        for start, word in _CHANNEL_WORDS:
            if shown.detail.startswith(start):
                return word
        return "consent"  # unsubscribed, no consent, needs opt-in
    return _WORDS.get(shown.rule, "other")


P = ParamSpec("P")


def measured_arbitration(
    arbitrate: Callable[P, Awaitable[Decision]],
) -> Callable[P, Coroutine[Any, Any, Decision]]:
    """Counts and times each decision of an `arbitrate` method; a failure as `error`."""

    @functools.wraps(arbitrate)
    async def measured(*args: P.args, **kwargs: P.kwargs) -> Decision:
        started, outcome, reason = time.perf_counter(), "error", "error"
        try:
            decision = await arbitrate(*args, **kwargs)
            outcome, reason = decision.action, reason_of(decision)
            return decision
        finally:
            DECISION_SECONDS.labels(outcome).observe(time.perf_counter() - started)
            DECISIONS.labels(outcome, reason).inc()

    return measured
