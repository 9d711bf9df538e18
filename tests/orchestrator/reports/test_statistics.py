"""The report statistics against textbook values, formulas written out, scipy, and
simulation with fixed seeds."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import optimize, stats  # type: ignore[import-untyped]

from orchestrator.reports.estimates import ArmTotals, Estimate
from orchestrator.reports.statistics import (
    analyse,
    compare,
    difference,
    fixed_horizon_p_value,
    mean_interval,
    relative_lift,
    sample_ratio_mismatch,
    sequence_multiplier,
    sequence_rho,
    sequential_test,
    summarise,
    wilson_interval,
)

Z = 1.959963984540054


def arm(users: int, conversions: int, name: str = "a") -> ArmTotals:
    return ArmTotals(name, users, conversions)


def revenue_arm(values: np.ndarray, name: str = "a") -> ArmTotals:
    return ArmTotals(
        name, len(values), int((values > 0).sum()), float(values.sum()), float((values**2).sum())
    )


def close(estimate: Estimate, value: float, low: float, high: float, tol: float = 5e-5) -> bool:
    assert estimate.value is not None
    assert estimate.low is not None
    assert estimate.high is not None
    return (
        abs(estimate.value - value) < tol
        and abs(estimate.low - low) < tol
        and abs(estimate.high - high) < tol
    )


def no_nan(value: object) -> str:
    return json.dumps(asdict(value), allow_nan=False)  # type: ignore[call-overload]


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I.
@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)  # fmt: skip
def test_wilson_interval_matches_newcombes_table(
    successes: int, trials: int, low: float, high: float
) -> None:
    assert close(wilson_interval(successes, trials), successes / trials, low, high, tol=5e-5)


@pytest.mark.parametrize(("successes", "trials"), [(0, 1), (1, 1), (3, 7), (50, 1000), (999, 1000)])
def test_wilson_interval_matches_scipy(successes: int, trials: int) -> None:
    expected = stats.binomtest(successes, trials).proportion_ci(method="wilson")
    assert close(wilson_interval(successes, trials), successes / trials, expected.low,
                 expected.high, tol=1e-12)  # fmt: skip
    wide = wilson_interval(successes, trials, confidence=0.99)
    assert wide.low is not None
    assert wide.high is not None
    assert wide.low <= expected.low + 1e-12
    assert wide.high >= expected.high - 1e-12


def test_wilson_interval_without_trials_is_undefined() -> None:
    assert wilson_interval(0, 0) == Estimate(None, None, None)


# Newcombe (1998), "Interval estimation for the difference between independent
# proportions", Table II, method 10 (the hybrid score interval).
@pytest.mark.parametrize(
    ("treatment", "control", "low", "high"),
    [((70, 56), (80, 48), 0.0524, 0.3339), ((10, 9), (10, 3), 0.1705, 0.8090),
     ((10, 0), (20, 0), -0.1611, 0.2775), ((10, 10), (20, 20), -0.2775, 0.1611)],
)  # fmt: skip
def test_rate_difference_matches_newcombes_table(
    treatment: tuple[int, int], control: tuple[int, int], low: float, high: float
) -> None:
    got = difference(arm(*treatment), arm(*control), metric="conversion")
    assert close(got, treatment[1] / treatment[0] - control[1] / control[0], low, high)


def test_relative_lift_of_rates_is_katzs_log_interval() -> None:
    # Katz et al. (1978): log RR ± z·√((1 - p₁)/x₁ + (1 - p₀)/x₀)
    ratio = (56 / 70) / (48 / 80)
    se = math.sqrt((1 - 56 / 70) / 56 + (1 - 48 / 80) / 48)
    got = relative_lift(arm(70, 56), arm(80, 48), metric="conversion")
    assert close(got, ratio - 1, ratio * math.exp(-Z * se) - 1, ratio * math.exp(Z * se) - 1,
                 tol=1e-9)  # fmt: skip


def test_pooled_z_test_is_pearsons_chi_squared_without_yates() -> None:
    for (n1, x1), (n0, x0) in [((70, 56), (80, 48)), ((5000, 260), (5000, 240)),
                               ((1000, 1), (3000, 12))]:  # fmt: skip
        table = [[x1, n1 - x1], [x0, n0 - x0]]
        expected = stats.chi2_contingency(table, correction=False).pvalue
        got = fixed_horizon_p_value(arm(n1, x1), arm(n0, x0), metric="conversion")
        assert got == pytest.approx(expected, rel=1e-9)
    got = fixed_horizon_p_value(arm(70, 56), arm(80, 48), metric="conversion")
    assert got == pytest.approx(0.008045, abs=1e-6)


def test_revenue_lift_and_welch_test_from_per_user_values() -> None:
    rng = np.random.default_rng(7)
    treated = np.where(rng.random(4000) < 0.06, rng.lognormal(3.6, 1.0, 4000), 0.0)
    control = np.where(rng.random(5000) < 0.05, rng.lognormal(3.5, 1.0, 5000), 0.0)
    one, zero = revenue_arm(treated), revenue_arm(control)
    m1, m0 = treated.mean(), control.mean()
    se = math.sqrt(treated.var(ddof=1) / 4000 + control.var(ddof=1) / 5000)
    assert close(difference(one, zero, metric="revenue"), m1 - m0, m1 - m0 - Z * se,
                 m1 - m0 + Z * se, tol=1e-9)  # fmt: skip
    log_se = math.sqrt(treated.var(ddof=1) / (4000 * m1**2) + control.var(ddof=1) / (5000 * m0**2))
    assert close(relative_lift(one, zero, metric="revenue"), m1 / m0 - 1,
                 m1 / m0 * math.exp(-Z * log_se) - 1, m1 / m0 * math.exp(Z * log_se) - 1,
                 tol=1e-9)  # fmt: skip
    p = fixed_horizon_p_value(one, zero, metric="revenue")
    assert p == pytest.approx(2 * stats.norm.sf(abs(m1 - m0) / se), rel=1e-9)
    per_user = mean_interval(one)
    half = Z * treated.std(ddof=1) / math.sqrt(4000)
    assert close(per_user, m1, m1 - half, m1 + half, tol=1e-9)
    # a few big spenders among many who spend nothing: the interval stops at zero
    few = ArmTotals("few", 3, 1, 24.0, 24.0**2)
    assert mean_interval(few) == Estimate(8.0, 0.0, pytest.approx(8.0 + Z * math.sqrt(192 / 3)))


@pytest.mark.parametrize(
    ("treatment", "control", "absolute", "relative", "p_value"),
    [
        # no users on one side: nothing is defined
        (arm(0, 0), arm(100, 5), None, None, None),
        # no conversions anywhere: a difference of 0 with an interval, no ratio, no test
        (arm(100, 0), arm(100, 0), 0.0, None, None),
        # everyone converts on both sides
        (arm(100, 100), arm(50, 50), 0.0, 0.0, None),
        # the treatment never converts: the ratio is -100%, without a log interval
        (arm(100, 0), arm(100, 10), -0.1, -1.0, "some"),
    ],
)
def test_edge_cases_give_none_not_nan(
    treatment: ArmTotals,
    control: ArmTotals,
    absolute: float | None,
    relative: float | None,
    p_value: str | None,
) -> None:
    comparison = compare(treatment, control, planning_users=1000)
    lift = comparison.conversion
    assert lift.absolute.value == (None if absolute is None else pytest.approx(absolute))
    assert lift.relative.value == (None if relative is None else pytest.approx(relative))
    assert (lift.p_value is None) == (p_value is None)
    if absolute is not None:
        assert lift.absolute.low is not None
    if relative == -1.0:
        assert lift.relative.low is None
    no_nan(comparison)
    no_nan(summarise(treatment))


def test_an_experiment_with_no_users_and_one_with_one_arm() -> None:
    empty = analyse([arm(0, 0, "a"), arm(0, 0, "b")], control="a", shares=[1, 1],
                    planning_users=1000)  # fmt: skip
    assert empty.arms[0].conversion_rate == Estimate(None)
    assert empty.arms[0].revenue_per_user == Estimate(None)
    assert empty.comparisons[0].conversion.sequential.significant is False
    assert empty.sample_ratio is not None
    assert empty.sample_ratio.p_value is None
    assert empty.sample_ratio.mismatch is False
    no_nan(empty)
    alone = analyse([arm(100, 7, "a")], control="a", shares=[1], planning_users=1000)
    assert alone.comparisons == ()
    assert alone.arms[0].conversion_rate.value == pytest.approx(0.07)
    assert alone.sample_ratio is not None
    assert alone.sample_ratio.p_value is None
    no_nan(alone)
    with pytest.raises(ValueError, match="control"):
        analyse([arm(1, 0, "a")], control="b", planning_users=10)
    with pytest.raises(ValueError, match="conversions"):
        arm(10, 11)


def test_a_holdout_report_with_revenue_serialises_to_json() -> None:
    treated = ArmTotals("journey", 9000, 540, 540 * 40.0, 540 * 2000.0)
    holdout = ArmTotals("holdout", 1000, 45, 45 * 38.0, 45 * 1900.0)
    report = analyse([treated, holdout], control="holdout", shares=[90, 10],
                     planning_users=20000)  # fmt: skip
    (comparison,) = report.comparisons
    assert comparison.arm == "journey"
    assert comparison.control == "holdout"
    # the two arms are the whole experiment, so the sequence is tuned for all of it
    assert comparison.conversion.sequential.planning_users == 20000
    assert report.sample_ratio is not None
    assert report.sample_ratio.expected == (9000.0, 1000.0)
    assert report.sample_ratio.mismatch is False
    assert json.loads(no_nan(report))["comparisons"][0]["revenue"]["metric"] == "revenue"


def test_each_comparison_is_planned_for_its_two_arms() -> None:
    arms = [arm(1000, 50, "control"), arm(1000, 55, "b"), arm(2000, 120, "c")]
    report = analyse(arms, control="control", shares=[1, 1, 2], planning_users=40_000)
    assert [c.conversion.sequential.planning_users for c in report.comparisons] == [20_000, 30_000]
    unshared = analyse(arms, control="control", planning_users=30_000)
    assert [c.arm for c in unshared.comparisons] == ["b", "c"]
    assert [c.revenue.sequential.planning_users for c in unshared.comparisons] == [20_000] * 2
    assert unshared.sample_ratio is None


def test_rho_is_the_papers_closed_form_and_nearly_optimal() -> None:
    alpha, planned = 0.05, 10_000
    rho = sequence_rho(planned)
    assert rho**2 == pytest.approx(
        (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / planned
    )
    best = optimize.minimize_scalar(
        lambda r: sequence_multiplier(planned, r), bounds=(1e-5, 1), method="bounded"
    )
    assert sequence_multiplier(planned, rho) <= best.fun * 1.001
    # wider than the fixed-horizon interval at the planned size, by about half
    assert 1.4 < sequence_multiplier(planned, rho) / Z < 1.7


def test_sequential_interval_is_the_papers_boundary() -> None:
    one, zero = arm(6000, 330, "b"), arm(6000, 290, "a")
    got = sequential_test(one, zero, metric="conversion", planning_users=20_000)
    # Waudby-Smith et al., Theorem 2.2: sigmâ √(2(trho²+1)/(t²rho²) · ln(√(trho²+1)/alpha)),
    # with sigmâ² = t(s₁²/n₁ + s₀²/n₀)
    t, rho = 12_000, got.rho
    p1, p0 = 330 / 6000, 290 / 6000
    s2 = t * (p1 * (1 - p1) * 6000 / 5999 / 6000 + p0 * (1 - p0) * 6000 / 5999 / 6000)
    half = math.sqrt(s2) * math.sqrt(
        2 * (t * rho**2 + 1) / (t**2 * rho**2) * math.log(math.sqrt(t * rho**2 + 1) / 0.05)
    )
    assert close(got.difference, p1 - p0, p1 - p0 - half, p1 - p0 + half, tol=1e-12)
    assert got.significant is False
    fixed = difference(one, zero, metric="conversion")
    assert fixed.low is not None
    assert got.difference.low is not None
    assert got.difference.low < fixed.low


def test_sequential_interval_of_rates_stays_within_one_hundred_points() -> None:
    """Few users make the confidence sequence wide; a difference of rates cannot leave
    [-1, 1], so neither does its interval."""
    got = sequential_test(arm(13, 13, "b"), arm(19, 8, "a"), metric="conversion",
                          planning_users=10_000)  # fmt: skip
    assert got.difference.value == pytest.approx(13 / 13 - 8 / 19)
    assert got.difference.low is not None
    assert got.difference.low >= -1.0
    assert got.difference.high == 1.0


def test_looking_every_day_does_not_inflate_false_positives() -> None:
    """A/A tests looked at 20 times: the confidence sequence keeps its promise, the
    repeated fixed-horizon test does not."""
    rng = np.random.default_rng(2024)
    runs, days, daily = 400, 20, 500
    a = rng.binomial(daily, 0.05, size=(runs, days)).cumsum(axis=1)
    b = rng.binomial(daily, 0.05, size=(runs, days)).cumsum(axis=1)
    sequential = naive = 0
    for run in range(runs):
        seq_hit = fixed_hit = False
        for day in range(days):
            n = daily * (day + 1)
            one, zero = arm(n, int(a[run, day]), "b"), arm(n, int(b[run, day]), "a")
            test = sequential_test(one, zero, metric="conversion", planning_users=2 * daily * days)
            seq_hit |= test.significant
            p = fixed_horizon_p_value(one, zero, metric="conversion")
            fixed_hit |= p is not None and p < 0.05
        sequential += seq_hit
        naive += fixed_hit
    assert sequential / runs <= 0.05
    assert naive / runs > 0.12


def test_a_real_effect_is_found() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    one = arm(n, int(rng.binomial(n, 0.06)), "b")
    zero = arm(n, int(rng.binomial(n, 0.05)), "a")
    test = sequential_test(one, zero, metric="conversion", planning_users=2 * n)
    assert test.significant


@pytest.mark.parametrize(
    ("users", "shares", "chi_squared", "mismatch"),
    [
        ([5000, 5000], [1, 1], 0.0, False),
        ([5100, 4900], [50, 50], 4.0, False),  # p = 0.0455: not below 0.001
        ([51_000, 49_000], [0.5, 0.5], 40.0, True),  # p = 2.5e-10
        ([9080, 920], [90, 10], 80**2 * (1 / 9000 + 1 / 1000), False),  # p = 0.0077
        ([9100, 900], [90, 10], 100**2 * (1 / 9000 + 1 / 1000), True),  # p = 0.00086
        ([2100, 1000, 900], [2, 1, 1], (100**2 / 2000 + 0 + 100**2 / 1000), True),
    ],
)
def test_sample_ratio_mismatch(
    users: list[int], shares: list[float], chi_squared: float, mismatch: bool
) -> None:
    check = sample_ratio_mismatch(users, shares)
    assert check.chi_squared == pytest.approx(chi_squared)
    assert check.p_value == pytest.approx(stats.chi2.sf(chi_squared, len(users) - 1))
    assert check.mismatch is mismatch


def test_sample_ratio_mismatch_edge_cases() -> None:
    nobody = sample_ratio_mismatch([0, 0], [1, 1])
    assert (nobody.p_value, nobody.mismatch) == (None, False)
    one_arm = sample_ratio_mismatch([100], [1])
    assert (one_arm.p_value, one_arm.mismatch) == (None, False)
    unconfigured = sample_ratio_mismatch([100, 100, 3], [1, 1, 0])
    assert (unconfigured.p_value, unconfigured.mismatch) == (0.0, True)
    idle = sample_ratio_mismatch([100, 100, 0], [1, 1, 0])
    assert idle.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="share"):
        sample_ratio_mismatch([1, 2], [1])
