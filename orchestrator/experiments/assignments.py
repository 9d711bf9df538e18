"""Assignments as data: every randomised choice, once per user, with its propensity.

    holdout          in `enroll`: control or treatment, with the holdout's share
    global_control   in `enroll`: the workspace's control group, with its share
    experiment       a fixed split when the step is recorded (its weight), a bandit when
                     it draws (the chance Thompson sampling had of drawing that arm)
    template         a send's template variants, drawn like a bandit

The first assignment of a user stands: it is never overwritten, whatever happens to
the journey later (an intent-to-treat analysis counts users where they were put).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import assignments
from workflows.assignment import BUCKETS, bucket

Kind = Literal["holdout", "global_control", "experiment", "template"]
Mode = Literal["fixed", "bandit"]
# The global control group belongs to no journey.
WORKSPACE = "*"
# Monte Carlo draws for a bandit arm's propensity: its standard error is at most
# 0.5 / sqrt(4000), under 0.008.
PROPENSITY_DRAWS = 4000


async def record(
    conn: AsyncConnection,
    *,
    journey_key: str,
    version: int | None,
    kind: Kind,
    experiment_key: str,
    mode: Mode,
    user_id: str,
    enrollment_id: int | None,
    arm: str,
    propensity: float | None,
    at: datetime,
) -> None:
    """Keep the user's first assignment of this kind and key; a later one is ignored."""
    await conn.execute(
        insert(assignments)
        .values(
            journey_key=journey_key,
            version=version,
            kind=kind,
            experiment_key=experiment_key,
            mode=mode,
            user_id=user_id,
            enrollment_id=enrollment_id,
            arm=arm,
            propensity=propensity,
            assigned_at=at,
        )
        .on_conflict_do_nothing(constraint="assignments_first_key")
    )


@dataclass(frozen=True)
class GlobalControl:
    """The workspace's global control group: a stable random `percent` of all users,
    kept out of every promotional message (`global_control` in orchestrator.yaml)."""

    workspace: str
    percent: float

    def holds(self, user_id: str) -> bool:
        """Whether the user is in it (the same answer every time)."""
        return self.percent > 0 and (
            bucket("global_control", self.workspace, user_id) < self.percent * BUCKETS / 100
        )


def thompson_propensities(
    stats: Sequence[tuple[int, int]], *, min_share: float, seed: int
) -> list[float]:
    """The probability that `workflows.assignment.thompson` draws each arm given these
    (trials, successes): the exploration floor's even share, plus the rest times each
    arm's chance of the highest Beta(1 + successes, 1 + failures) draw, estimated by
    Monte Carlo; never zero."""
    arms = len(stats)
    rng = np.random.default_rng(seed)
    won = np.array([w for _, w in stats], dtype=float)
    lost = np.array([max(0, t - w) for t, w in stats], dtype=float)
    draws = rng.beta(1 + won, 1 + lost, size=(PROPENSITY_DRAWS, arms))
    # One more, imaginary draw shared evenly: an arm the Monte Carlo never saw win still
    # has a chance above zero (it can be drawn for real, and 1/0 has no weight).
    best = (np.bincount(draws.argmax(axis=1), minlength=arms) + 1 / arms) / (PROPENSITY_DRAWS + 1)
    floor = min_share * arms
    return [float(min_share + (1 - floor) * share) for share in best]
