"""Power and sample sizes against Fleiss's table, the formulas written out, and
simulation with a fixed seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from orchestrator.reports.estimates import ArmTotals
from orchestrator.reports.power import (
    minimum_detectable_effect,
    users_needed,
    users_per_arm_for_mean,
    users_per_arm_for_rate,
)
from orchestrator.reports.statistics import fixed_horizon_p_value

Z = 1.959963984540054


def arm(users: int, conversions: int, name: str = "a") -> ArmTotals:
    return ArmTotals(name, users, conversions)


def test_users_per_arm_for_rates_matches_fleiss_table() -> None:
    # Fleiss, Levin, Paik: p₀ = 0.05, p₁ = 0.10, alpha = 0.05 two-sided, power 0.80:
    # 435 per group without the continuity correction (474 with it)
    assert users_per_arm_for_rate(0.05, 1.0) == 435
    assert users_per_arm_for_rate(0.05, 0.0) is None
    assert users_per_arm_for_rate(0.6, 1.0) is None
    # the classic 63 per group for half a standard deviation (normal approximation)
    assert users_per_arm_for_mean(10.0, 10.0, 0.5) == 63
    assert users_per_arm_for_mean(10.0, 10.0, 0.0) is None


def test_minimum_detectable_effect_inverts_the_sample_size() -> None:
    n = users_per_arm_for_rate(0.10, 0.2)
    assert n is not None
    mde = minimum_detectable_effect(arm(n, n // 10), treatment_users=n, metric="conversion")
    assert mde.absolute is not None
    assert mde.relative is not None
    assert mde.relative == pytest.approx(0.2, abs=0.001)
    assert mde.absolute == pytest.approx((n // 10) / n * mde.relative)
    # by simulation: the fixed-horizon test finds that effect about 80% of the time
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(1000):
        one = arm(n, int(rng.binomial(n, (n // 10) / n + mde.absolute)), "b")
        zero = arm(n, int(rng.binomial(n, (n // 10) / n)), "a")
        p = fixed_horizon_p_value(one, zero, metric="conversion")
        found += p is not None and p < 0.05
    assert 0.75 <= found / 1000 <= 0.85


def test_minimum_detectable_effect_for_revenue_and_edges() -> None:
    control = ArmTotals("a", 1000, 50, 50 * 40.0, 50 * 2000.0)
    sd = math.sqrt((50 * 2000.0 - (50 * 40.0) ** 2 / 1000) / 999)
    mde = minimum_detectable_effect(control, treatment_users=3000, metric="revenue")
    expected = (Z + stats.norm.ppf(0.8)) * sd * math.sqrt(1 / 3000 + 1 / 1000)
    assert mde.absolute == pytest.approx(expected)
    assert mde.relative == pytest.approx(expected / 2.0)
    none = minimum_detectable_effect(arm(0, 0), treatment_users=100, metric="conversion")
    assert (none.absolute, none.relative) == (None, None)
    everyone = minimum_detectable_effect(arm(100, 100), treatment_users=100, metric="conversion")
    assert everyone.absolute is None
    nothing = minimum_detectable_effect(arm(1000, 0), treatment_users=1000, metric="conversion")
    assert nothing.absolute is not None
    assert nothing.relative is None
    flat = minimum_detectable_effect(arm(100, 0), treatment_users=100, metric="revenue")
    assert flat.absolute is None


def test_users_needed_for_lifts_over_the_controls_rate() -> None:
    control = ArmTotals("control", 1000, 50)
    needed = users_needed(control, lifts=(0.1, 1.0))
    assert [n.relative_lift for n in needed] == [0.1, 1.0]
    assert [n.users_per_arm for n in needed] == [
        users_per_arm_for_rate(0.05, 0.1),
        435,  # 5% to 10%, as in Fleiss's table
    ]
    assert users_needed(ArmTotals("control", 0, 0))[0].users_per_arm is None
    assert users_needed(ArmTotals("control", 100, 0))[0].users_per_arm is None  # 0% stays 0%
