"""Power: the smallest increase an experiment can detect with the users it has, and the
users per arm it needs to detect a given one.

Normal approximations for a two-sided test at `alpha` with `power`: Fleiss's for rates
(without the continuity correction); for means, the baseline's standard deviation in
both arms. Pure functions; where no increase is detectable or the baseline is
undefined, the answer is None, never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize, special  # type: ignore[import-untyped]

from orchestrator.reports.estimates import (
    CONFIDENCE,
    ArmTotals,
    Metric,
    critical_z,
    finite,
    moments,
)

POWER = 0.8
# The relative lifts in conversion a report says the users needed for.
PLANNED_LIFTS = (0.05, 0.10, 0.20)


@dataclass(frozen=True, slots=True)
class DetectableEffect:
    """The smallest increase over the control the test would find with the given power."""

    absolute: float | None
    relative: float | None


def minimum_detectable_effect(
    control: ArmTotals,
    *,
    treatment_users: int,
    metric: Metric,
    alpha: float = 1 - CONFIDENCE,
    power: float = POWER,
) -> DetectableEffect:
    """The minimum detectable increase with the users there are, for a two-sided test at
    `alpha` with `power`, taking the control as the baseline. Rates: the d solving

        d = z(1 - alpha/2)·√(p̄(1 - p̄)(1/n₁ + 1/n₀)) + z(power)·√(p₁(1 - p₁)/n₁ + p₀(1 - p₀)/n₀)

    with p₁ = p₀ + d and p̄ the pooled rate (the inverse of `users_per_arm_for_rate`).
    Means: d = (z(1 - alpha/2) + z(power))·s₀·√(1/n₁ + 1/n₀), s₀ the control's standard
    deviation. None where no increase is detectable or the baseline is undefined."""
    n1 = treatment_users
    n0, m0, v0 = moments(control, metric)
    if n1 <= 0 or m0 is None:
        return DetectableEffect(None, None)
    z_alpha, z_power = critical_z(1 - alpha), float(special.ndtri(power))
    if metric == "revenue":
        if v0 is None or v0 == 0:
            return DetectableEffect(None, None)
        delta = (z_alpha + z_power) * math.sqrt(v0 * (1 / n1 + 1 / n0))
        return DetectableEffect(finite(delta), finite(delta / m0) if m0 > 0 else None)
    p0 = m0

    def shortfall(delta: float) -> float:
        p1 = p0 + delta
        pooled = (n1 * p1 + n0 * p0) / (n1 + n0)
        null = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
        alternative = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
        return z_alpha * null + z_power * alternative - delta

    top = 1 - p0
    if top <= 0 or shortfall(top) > 0:
        return DetectableEffect(None, None)
    delta = float(optimize.brentq(shortfall, min(1e-12, top), top, xtol=1e-12))
    return DetectableEffect(finite(delta), finite(delta / p0) if p0 > 0 else None)


def users_per_arm_for_rate(
    baseline_rate: float, relative_effect: float, *, alpha: float = 1 - CONFIDENCE,
    power: float = POWER,
) -> int | None:  # fmt: skip
    """Users per arm for a two-sided test at `alpha` to detect p₁ = p₀(1 + relative_effect)
    with `power` (Fleiss, Levin, Paik 2003, Statistical Methods for Rates and
    Proportions, ch. 4, without the continuity correction):

        n = (z(1 - alpha/2)·√(2p̄(1 - p̄)) + z(power)·√(p₀(1 - p₀) + p₁(1 - p₁)))² / (p₁ - p₀)²

    with p̄ = (p₀ + p₁)/2. None when the effect is zero or p₁ falls outside [0, 1]."""
    p0, p1 = baseline_rate, baseline_rate * (1 + relative_effect)
    if p1 == p0 or not (0 <= p0 <= 1 and 0 <= p1 <= 1):
        return None
    pooled = (p0 + p1) / 2
    null = critical_z(1 - alpha) * math.sqrt(2 * pooled * (1 - pooled))
    alternative = float(special.ndtri(power)) * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))
    return math.ceil((null + alternative) ** 2 / (p1 - p0) ** 2)


def users_per_arm_for_mean(
    baseline_mean: float, baseline_sd: float, relative_effect: float, *,
    alpha: float = 1 - CONFIDENCE, power: float = POWER,
) -> int | None:  # fmt: skip
    """Users per arm to detect a mean of baseline_mean·(1 + relative_effect), both arms
    with standard deviation baseline_sd (normal approximation):
    n = 2(z(1 - alpha/2) + z(power))²·sd² / d², d = baseline_mean·relative_effect.
    None for a zero effect."""
    delta = baseline_mean * relative_effect
    if delta == 0 or not math.isfinite(delta):
        return None
    z = critical_z(1 - alpha) + float(special.ndtri(power))
    return math.ceil(2 * z * z * baseline_sd * baseline_sd / (delta * delta))


@dataclass(frozen=True, slots=True)
class UsersNeeded:
    relative_lift: float  # of the conversion rate, 0.1 for +10%
    users_per_arm: int | None  # None when the control's rate is undefined, 0, or too high


def users_needed(
    control: ArmTotals, *, lifts: tuple[float, ...] = PLANNED_LIFTS,
    alpha: float = 1 - CONFIDENCE, power: float = POWER,
) -> tuple[UsersNeeded, ...]:  # fmt: skip
    """Users per arm to detect each relative lift over the control's conversion rate so
    far: how long an experiment has to run for the effect that matters."""
    rate = control.conversions / control.users if control.users else None
    return tuple(
        UsersNeeded(lift, None if rate is None else
                    users_per_arm_for_rate(rate, lift, alpha=alpha, power=power))
        for lift in lifts
    )  # fmt: skip
