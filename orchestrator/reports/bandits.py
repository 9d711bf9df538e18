"""Bandit arms: each arm's mean outcome had every user got it, from a bandit's per-user
rows, by inverse-propensity weighting (Horvitz-Thompson and Hájek), with normal intervals.

Pure functions over the rows (the arm chosen, the probability it had when chosen, the
outcome); an arm no row chose has no estimate (None, never NaN). For what a different
allocation would have earned, see `offpolicy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from orchestrator.reports.estimates import CONFIDENCE, Estimate, critical_z


@dataclass(frozen=True, slots=True)
class BanditArmEstimate:
    """An arm's mean outcome under the bandit, had every user got that arm."""

    arm: str
    users: int  # rows that chose this arm
    horvitz_thompson: Estimate
    hajek: Estimate


def bandit_estimates(
    *,
    arms: Sequence[str],
    chosen: ArrayLike,
    propensity: ArrayLike,
    outcome: ArrayLike,
    confidence: float = CONFIDENCE,
) -> tuple[BanditArmEstimate, ...]:
    """Each arm's rate (or mean outcome) from a bandit's per-user rows, weighting each
    user who got arm a by 1/propensity (the probability that arm had when chosen).

    Horvitz-Thompson: μ̂ = (1/N) Σ 1[Aᵢ = a] yᵢ / πᵢ over all N rows, variance
    Σ (xᵢ - μ̂)² / N². Hájek (self-normalised): μ̂ = Σ wᵢyᵢ / Σ wᵢ, wᵢ = 1[Aᵢ = a]/πᵢ,
    linearised variance Σ wᵢ²(yᵢ - μ̂)² / (Σ wᵢ)². Normal intervals. The terms are
    martingale differences when πᵢ is the probability at the moment of choice, so the
    intervals hold as long as every arm keeps a floor of traffic (`min_share`)."""
    picked = np.asarray(chosen)
    p = np.asarray(propensity, dtype=float)
    y = np.asarray(outcome, dtype=float)
    if not picked.shape == p.shape == y.shape or picked.ndim != 1:
        raise ValueError("chosen, propensity and outcome must be 1-d and of one length")
    if np.any(~(p > 0) | (p > 1)) or not np.all(np.isfinite(y)):
        raise ValueError("propensities must be in (0, 1] and outcomes finite")
    z, rows = critical_z(confidence), len(y)
    estimates = []
    for arm in arms:
        mask = picked == arm if rows else np.zeros(0, dtype=bool)
        users = int(mask.sum())
        if users == 0:
            estimates.append(BanditArmEstimate(arm, 0, Estimate(None), Estimate(None)))
            continue
        w = np.where(mask, 1 / p, 0.0)
        terms = w * y
        ht = float(terms.mean())
        ht_half = z * math.sqrt(float(((terms - ht) ** 2).sum())) / rows
        hajek = float(terms.sum() / w.sum())
        hajek_half = z * math.sqrt(float((w * w * (y - hajek) ** 2).sum())) / float(w.sum())
        estimates.append(
            BanditArmEstimate(
                arm,
                users,
                Estimate.of(ht, ht - ht_half, ht + ht_half),
                Estimate.of(hajek, hajek - hajek_half, hajek + hajek_half),
            )
        )
    return tuple(estimates)
