"""Bandit-arm inverse-propensity estimates by hand and under a simulated adaptive bandit
with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.reports.bandits import bandit_estimates
from orchestrator.reports.estimates import Estimate

Z = 1.959963984540054


def close(estimate: Estimate, value: float, low: float, high: float, tol: float = 5e-5) -> bool:
    assert estimate.value is not None
    assert estimate.low is not None
    assert estimate.high is not None
    return (
        abs(estimate.value - value) < tol
        and abs(estimate.low - low) < tol
        and abs(estimate.high - high) < tol
    )


def test_bandit_estimates_by_hand() -> None:
    (a, b, c) = bandit_estimates(
        arms=["a", "b", "c"], chosen=["a", "a", "b"], propensity=[0.5, 0.25, 0.5],
        outcome=[1, 0, 1],
    )  # fmt: skip
    terms = np.array([2.0, 0.0, 0.0])
    half = Z * math.sqrt(((terms - 2 / 3) ** 2).sum()) / 3
    assert close(a.horvitz_thompson, 2 / 3, 2 / 3 - half, 2 / 3 + half, tol=1e-12)
    weights = np.array([2.0, 4.0])
    hajek = 2 / 6
    half = Z * math.sqrt((weights**2 * (np.array([1, 0]) - hajek) ** 2).sum()) / 6
    assert close(a.hajek, hajek, hajek - half, hajek + half, tol=1e-12)
    assert a.users == 2
    assert b.hajek.value == 1.0
    assert c == type(c)("c", 0, Estimate(None), Estimate(None))
    with pytest.raises(ValueError, match="propensities"):
        bandit_estimates(arms=["a"], chosen=["a"], propensity=[0.0], outcome=[1])
    (nobody,) = bandit_estimates(arms=["a"], chosen=[], propensity=[], outcome=[])
    assert (nobody.users, nobody.horvitz_thompson, nobody.hajek) == (
        0,
        Estimate(None),
        Estimate(None),
    )


def test_bandit_estimates_are_unbiased_and_cover_under_adaptive_assignment() -> None:
    """An epsilon-greedy bandit (exact propensities) on rates 4/5/6%: each arm's
    estimates average to its true rate, and the intervals cover about 95% of the time."""
    rates = np.array([0.04, 0.05, 0.06])
    names = ["a", "b", "c"]
    runs, users, batch, epsilon = 300, 6000, 500, 0.3
    estimates = np.zeros((runs, 2, 3))
    covered = np.zeros((2, 3))
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        chosen, propensity, outcome = [], [], []
        tried, won = np.zeros(3), np.zeros(3)
        for _ in range(users // batch):
            best = int(np.argmax((won + 1) / (tried + 2)))
            p = np.full(3, epsilon / 3)
            p[best] += 1 - epsilon
            picks = rng.choice(3, size=batch, p=p)
            converted = rng.random(batch) < rates[picks]
            np.add.at(tried, picks, 1)
            np.add.at(won, picks, converted)
            chosen.append(picks)
            propensity.append(p[picks])
            outcome.append(converted)
        got = bandit_estimates(
            arms=names, chosen=np.array(names)[np.concatenate(chosen)],
            propensity=np.concatenate(propensity), outcome=np.concatenate(outcome),
        )  # fmt: skip
        for i, estimate in enumerate(got):
            for j, part in enumerate((estimate.horvitz_thompson, estimate.hajek)):
                assert part.value is not None
                assert part.low is not None
                assert part.high is not None
                estimates[seed, j, i] = part.value
                covered[j, i] += part.low <= rates[i] <= part.high
    mean = estimates.mean(axis=0)
    error = estimates.std(axis=0) / math.sqrt(runs)
    assert np.all(np.abs(mean - rates) < 4 * error)
    assert np.all((covered / runs >= 0.90) & (covered / runs <= 0.99))
