"""Off-policy evaluation: what another allocation would have earned, from logged choices.

Each logged row is one user: the arm chosen, the probability the logging policy gave
that arm at that moment (its propensity), and the reward (converted, clicked, revenue).
A target allocation gives each row a probability for every arm: one row of shares for
all ("always B" is a one-hot row, a different split is its weights), or one row per
logged row for a policy that depends on the user. With w = target(chosen) / propensity:

    IPS     (1/n) Σ wᵢrᵢ                                    unbiased (Horvitz-Thompson)
    SNIPS   Σ wᵢrᵢ / Σ wᵢ                                   self-normalised (Hájek)
    DR      (1/n) Σ [Σₐ target(a)·q̂ᵢ(a) + wᵢ(rᵢ - q̂ᵢ(Aᵢ))]  doubly robust

(Dudík, Langford, Li 2011, "Doubly robust policy evaluation and learning"; q̂ is a
reward model's prediction per arm, trained on other data.) Every estimate carries a
BCa bootstrap interval (bias-corrected and accelerated, Efron 1987) from `resamples`
resamples of the rows with replacement (1,000 unless told), drawn from the numpy
Generator given; one draw of indices serves every estimator of a call.

Ranking (`ranking_ips`): one row per item shown, with its position and the probability
the logging policy (which explored with a known probability) put that item there. The
item-position estimator (Li, Kim, Zitouni 2018, "Offline evaluation of ranking policies
with click models") sums, per impression, target(item at position) / logging(item at
position) · reward, and averages over impressions: unbiased for the target ranking's
expected reward per impression when the reward of an item depends only on the item and
its position (the position-based click model), and the logging policy could put every
item the target ranks at its position. Impressions are resampled as wholes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special  # type: ignore[import-untyped]

Estimator = Literal["ips", "snips", "doubly_robust", "ranking_ips"]
RESAMPLES = 1000
CONFIDENCE = 0.95
_CHUNK_CELLS = 2_000_000  # bootstrap indices drawn at once: bounds memory to tens of MB


@dataclass(frozen=True, slots=True)
class OffPolicyEstimate:
    """The target's mean reward per row (per impression for rankings), with its interval;
    None where undefined (no rows, a resample with no weight)."""

    estimator: Estimator
    value: float | None
    low: float | None
    high: float | None
    rows: int  # logged rows (impressions for rankings)
    resamples: int
    effective_sample_size: float | None  # (Σw)² / Σw²: how many rows the weights amount to


@dataclass(frozen=True, slots=True)
class OffPolicyReport:
    ips: OffPolicyEstimate
    snips: OffPolicyEstimate
    doubly_robust: OffPolicyEstimate | None  # None without a reward model


def always(arm: int, arms: int) -> NDArray[np.float64]:
    """The target allocation that gives every user `arm` (of `arms`)."""
    if not 0 <= arm < arms:
        raise ValueError("arm out of range")
    target = np.zeros(arms)
    target[arm] = 1.0
    return target


def split(weights: Sequence[float]) -> NDArray[np.float64]:
    """The target allocation that spreads users by `weights` (any non-negative scale)."""
    target = np.asarray(weights, dtype=float)
    if target.ndim != 1 or np.any(target < 0) or target.sum() <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    shares: NDArray[np.float64] = target / target.sum()
    return shares


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _interval(
    estimate: float,
    samples: NDArray[np.float64],
    numerator: NDArray[np.float64],
    denominator: NDArray[np.float64],
    confidence: float,
) -> tuple[float | None, float | None]:
    """The BCa bootstrap interval (Efron 1987) of Σ numerator / Σ denominator: the
    percentiles of the resampled estimates, moved for their median bias (z₀, from the
    share of resamples below the estimate) and for skew (the acceleration a, from the
    jackknife, which has a closed form here: leave row i out of both sums). Weighted
    rewards are skewed, and the plain percentile interval under-covers them."""
    kept = samples[np.isfinite(samples)]
    if len(kept) == 0:
        return None, None
    below = (np.sum(kept < estimate) + 0.5 * np.sum(kept == estimate)) / len(kept)
    z0 = float(special.ndtri(np.clip(below, 0.5 / len(kept), 1 - 0.5 / len(kept))))
    with np.errstate(divide="ignore", invalid="ignore"):
        jackknife = (numerator.sum() - numerator) / (denominator.sum() - denominator)
    jackknife = jackknife[np.isfinite(jackknife)]
    spread = jackknife.mean() - jackknife if len(jackknife) else np.zeros(1)
    squares = float((spread**2).sum())
    a = float((spread**3).sum()) / (6 * squares**1.5) if squares > 0 else 0.0
    tail = (1 - confidence) / 2
    z = special.ndtri(np.array([tail, 1 - tail]))
    levels = special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = np.quantile(kept, levels)
    return _number(float(low)), _number(float(high))


def _bootstrap(
    numerators: NDArray[np.float64],
    denominators: NDArray[np.float64],
    *,
    rng: np.random.Generator,
    resamples: int,
) -> NDArray[np.float64]:
    """Σ numerator / Σ denominator over each resample of the n columns, for each of the
    m rows of `numerators` and `denominators` (m x n): an m x resamples array. Each
    resample draws n column indices with replacement; their counts times the columns
    give the sums (much faster than gathering the columns)."""
    m, n = numerators.shape
    out = np.empty((m, resamples))
    chunk = max(1, _CHUNK_CELLS // n)
    columns = np.ascontiguousarray(np.concatenate([numerators, denominators]).T)  # n x 2m
    offsets = n * np.arange(chunk)[:, np.newaxis]
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, resamples, chunk):
            size = min(resamples, start + chunk) - start
            index = rng.integers(0, n, size=(size, n)) + offsets[:size]
            counts = np.bincount(index.ravel(), minlength=size * n).reshape(size, n)
            # einsum rather than @: a multi-threaded BLAS call this small is slower, far
            # slower when other processes hold the cores
            sums = np.einsum("bn,nk->kb", counts.astype(np.float64), columns)
            out[:, start : start + size] = sums[:m] / sums[m:]
    return out


def _ess(weights: NDArray[np.float64]) -> float | None:
    squares = float((weights * weights).sum())
    return _number(float(weights.sum()) ** 2 / squares) if squares > 0 else None


def evaluate(
    *,
    chosen: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    target: ArrayLike,
    rng: np.random.Generator,
    predictions: ArrayLike | None = None,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> OffPolicyReport:
    """IPS, SNIPS and (given a reward model's `predictions`, n x arms) doubly robust
    estimates of the target allocation's mean reward per user, each with a BCa
    bootstrap interval from `resamples` resamples of the rows.

    `chosen` holds arm indices 0..arms-1, `propensity` the logged probability of the
    chosen arm (in (0, 1]), `target` the target's probabilities per arm: one row (arms,)
    for every user, or one per logged row (n x arms)."""
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be positive and confidence in (0, 1)")
    arm = np.asarray(chosen)
    p = np.asarray(propensity, dtype=float)
    r = np.asarray(reward, dtype=float)
    n = len(r)
    goal = np.asarray(target, dtype=float)
    arms = goal.shape[-1]
    goal = np.broadcast_to(goal, (n, arms)) if goal.ndim == 1 else goal
    if not arm.shape == p.shape == r.shape == (n,) or goal.shape != (n, arms):
        raise ValueError("chosen, propensity and reward are 1-d of one length; target fits")
    if n and (arm.dtype.kind not in "iu" or arm.min() < 0 or arm.max() >= arms):
        raise ValueError("chosen must hold arm indices below the target's number of arms")
    if np.any(~(p > 0) | (p > 1)) or not np.all(np.isfinite(r)):
        raise ValueError("propensities must be in (0, 1] and rewards finite")
    if np.any(goal < 0) or not np.allclose(goal.sum(axis=1), 1.0):
        raise ValueError("each target row must be probabilities summing to 1")
    model = None
    if predictions is not None:
        model = np.broadcast_to(np.asarray(predictions, dtype=float), (n, arms))
        if not np.all(np.isfinite(model)):
            raise ValueError("predictions must be finite")
    if n == 0:
        empty = OffPolicyEstimate("ips", None, None, None, 0, resamples, None)
        dr = None if model is None else replace(empty, estimator="doubly_robust")
        return OffPolicyReport(empty, replace(empty, estimator="snips"), dr)

    rows = np.arange(n)
    w = goal[rows, arm] / p
    numerators = [w * r, w * r]
    denominators = [np.ones(n), w]
    if model is not None:
        numerators.append((goal * model).sum(axis=1) + w * (r - model[rows, arm]))
        denominators.append(np.ones(n))
    num, den = np.stack(numerators), np.stack(denominators)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = num.sum(axis=1) / den.sum(axis=1)
    boot = _bootstrap(num, den, rng=rng, resamples=resamples)
    ess = _ess(w)

    def estimate(i: int, name: Estimator) -> OffPolicyEstimate:
        value = _number(float(values[i]))
        low, high = None, None
        if value is not None:
            low, high = _interval(value, boot[i], num[i], den[i], confidence)
        return OffPolicyEstimate(name, value, low, high, n, resamples, ess)

    dr = estimate(2, "doubly_robust") if model is not None else None
    return OffPolicyReport(estimate(0, "ips"), estimate(1, "snips"), dr)


def ranking_target_probability(
    *,
    impression: Sequence[Hashable],
    item: Sequence[Hashable],
    position: Sequence[int],
    rankings: Mapping[Hashable, Sequence[Hashable]],
) -> NDArray[np.float64]:
    """Per shown row, the probability a deterministic target ranking puts that item at
    that position: 1.0 where `rankings[impression][position] == item`, else 0.0.
    Positions count from 0 (the top); an impression missing from `rankings` gets 0."""
    out = np.zeros(len(item))
    for i, (key, shown, at) in enumerate(zip(impression, item, position, strict=True)):
        ranking = rankings.get(key, ())
        out[i] = 1.0 if 0 <= at < len(ranking) and ranking[at] == shown else 0.0
    return out


def ranking_ips(
    *,
    impression: ArrayLike,
    logging_probability: ArrayLike,
    target_probability: ArrayLike,
    reward: ArrayLike,
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> OffPolicyEstimate:
    """A target ranking's expected reward per impression (clicks or purchases summed
    over its positions), from rows of shown items: the item-position IPS estimate
    mean over impressions of Σ target(item at position) / logging(item at position) ·
    reward, with a bootstrap over impressions. `target_probability` per row comes from
    `ranking_target_probability` for a fixed ranking, or from a stochastic ranker."""
    key = np.asarray(impression)
    p = np.asarray(logging_probability, dtype=float)
    goal = np.asarray(target_probability, dtype=float)
    r = np.asarray(reward, dtype=float)
    if not key.shape == p.shape == goal.shape == r.shape or key.ndim != 1:
        raise ValueError("one impression, probability, target and reward per shown row")
    if np.any(~(p > 0) | (p > 1)) or np.any((goal < 0) | (goal > 1)):
        raise ValueError("probabilities must be in (0, 1] (logging) and [0, 1] (target)")
    if len(key) == 0:
        return OffPolicyEstimate("ranking_ips", None, None, None, 0, resamples, None)
    _, which = np.unique(key, return_inverse=True)
    per_impression = np.bincount(which, weights=goal / p * r).astype(float)
    impressions = len(per_impression)
    value = _number(float(per_impression.mean()))
    boot = _bootstrap(
        per_impression[np.newaxis, :], np.ones((1, impressions)), rng=rng, resamples=resamples
    )
    low, high = None, None
    if value is not None:
        low, high = _interval(value, boot[0], per_impression, np.ones(impressions), confidence)
    return OffPolicyEstimate("ranking_ips", value, low, high, impressions, resamples, None)
