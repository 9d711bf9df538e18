"""Allocation: sticky consistent hashing (experiment variants, holdouts) and the bandit."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(*parts: str) -> int:
    """A stable bucket in [0, 10000) for the given identity parts."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def pick_variant(experiment_key: str, user_id: str, weights: Sequence[int]) -> int:
    """The index of the variant a user gets; the same user always gets the same one."""
    point = bucket("experiment", experiment_key, user_id) * sum(weights) / BUCKETS
    edge = 0
    for index, weight in enumerate(weights):
        edge += weight
        if point < edge:
            return index
    return len(weights) - 1


def in_holdout(journey_key: str, user_id: str, percent: float) -> bool:
    """Whether a user is in the journey's control group (the same answer every time)."""
    return bucket("holdout", journey_key, user_id) < percent * BUCKETS / 100


def thompson(stats: Sequence[tuple[int, int]], *, min_share: float, rng: random.Random) -> int:
    """The variant a new user gets in a bandit: Thompson sampling on each variant's
    (trials, successes) with a Beta(1 + successes, 1 + failures) posterior, except that
    a `min_share x variants` part of users is spread evenly, so every variant keeps at
    least `min_share` of new users (the exploration floor)."""
    if rng.random() < min_share * len(stats):
        return rng.randrange(len(stats))
    draws = [rng.betavariate(1 + won, 1 + max(0, tried - won)) for tried, won in stats]
    return max(range(len(stats)), key=draws.__getitem__)
