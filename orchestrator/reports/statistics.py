"""Experiment statistics: rates, intervals, lift, fixed and sequential tests, the
sample-ratio check, and the report that puts them together (`compare`, `analyse`).

Pure functions over per-arm sums (users, conversions, revenue and its sum of squares,
which SQL aggregates); no I/O, clock or randomness. Results are frozen dataclasses of
plain floats, ints, bools and strings (`dataclasses.asdict` is JSON-ready): a number
that is undefined (no users, a division by zero, no variation) is None, never NaN. The
unit of analysis is the user; intervals are two-sided.

    rate interval          Wilson score
    mean interval          normal, sample variance from Σy and Σy²
    absolute lift          Newcombe's hybrid score (rates), Welch normal (means)
    relative lift          delta method on log(treatment / control) (Katz for rates)
    fixed-horizon test     pooled two-proportion z-test = Pearson χ² without Yates
                           (rates); Welch z-test (means)
    sequential test        asymptotic confidence sequence (Waudby-Smith et al.)
    sample-ratio mismatch  χ² goodness of fit against the configured shares

The shared types (`ArmTotals`, `Estimate`) live in `estimates`; the minimum detectable
effect each comparison carries, and sample sizes, in `power`; inverse-propensity
estimates for bandit arms in `bandits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special, stats  # type: ignore[import-untyped]

from orchestrator.reports.estimates import (
    CONFIDENCE,
    ArmTotals,
    Estimate,
    Metric,
    critical_z,
    finite,
    moments,
)
from orchestrator.reports.power import (
    POWER,
    DetectableEffect,
    UsersNeeded,
    minimum_detectable_effect,
    users_needed,
)

SRM_THRESHOLD = 0.001


def _two_sided_p(z: float) -> float:
    return float(2 * special.ndtr(-abs(z)))


def wilson_interval(successes: int, trials: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """The rate successes / trials with its Wilson score interval (Wilson 1927), the
    interval scipy's `binomtest(...).proportion_ci(method="wilson")` gives."""
    if trials <= 0:
        return Estimate(None)
    z, p = critical_z(confidence), successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # At 0 or every success the closed form lands a rounding error inside [0, 1].
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Estimate.of(p, low, high)


def mean_interval(arm: ArmTotals, *, confidence: float = CONFIDENCE) -> Estimate:
    """Revenue per user with a normal interval, mean ± z·s/√n (s from Σy and Σy²;
    no interval for fewer than two users), cut at zero: revenue is never negative."""
    n, mean, variance = moments(arm, "revenue")
    if mean is None or variance is None:
        return Estimate.of(mean)
    half = critical_z(confidence) * math.sqrt(variance / n)
    return Estimate.of(mean, max(0.0, mean - half), mean + half)


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    users: int
    conversions: int
    conversion_rate: Estimate
    revenue_per_user: Estimate


def summarise(arm: ArmTotals, *, confidence: float = CONFIDENCE) -> ArmSummary:
    """An arm's conversion rate (Wilson) and revenue per user (normal), with intervals."""
    rate = wilson_interval(arm.conversions, arm.users, confidence=confidence)
    revenue = mean_interval(arm, confidence=confidence)
    return ArmSummary(arm.arm, arm.users, arm.conversions, rate, revenue)


def _parts(estimate: Estimate) -> tuple[float, float, float]:
    if estimate.value is None or estimate.low is None or estimate.high is None:
        raise ValueError("an estimate without an interval")
    return estimate.value, estimate.low, estimate.high


def difference(
    treatment: ArmTotals, control: ArmTotals, *, metric: Metric, confidence: float = CONFIDENCE
) -> Estimate:
    """Treatment minus control. Rates: Newcombe's hybrid score interval from the two
    Wilson intervals (Newcombe 1998, method 10), sound at zero or all conversions.
    Means: Welch's normal interval, d ± z·√(s₁²/n₁ + s₀²/n₀)."""
    if treatment.users == 0 or control.users == 0:
        return Estimate(None)
    if metric == "conversion":
        one = wilson_interval(treatment.conversions, treatment.users, confidence=confidence)
        zero = wilson_interval(control.conversions, control.users, confidence=confidence)
        p1, low1, high1 = _parts(one)
        p0, low0, high0 = _parts(zero)
        d = p1 - p0
        return Estimate.of(
            d, d - math.hypot(p1 - low1, high0 - p0), d + math.hypot(high1 - p1, p0 - low0)
        )
    n1, m1, v1 = moments(treatment, metric)
    n0, m0, v0 = moments(control, metric)
    if m1 is None or m0 is None:
        return Estimate(None)
    if v1 is None or v0 is None:
        return Estimate.of(m1 - m0)
    half = critical_z(confidence) * math.sqrt(v1 / n1 + v0 / n0)
    return Estimate.of(m1 - m0, m1 - m0 - half, m1 - m0 + half)


def relative_lift(
    treatment: ArmTotals, control: ArmTotals, *, metric: Metric, confidence: float = CONFIDENCE
) -> Estimate:
    """treatment / control - 1, with the delta-method interval on the log of the ratio:
    exp(log r ± z·√(v₁/(n₁m₁²) + v₀/(n₀m₀²))) - 1. For rates v = p(1 - p), which is
    Katz's log interval for a risk ratio (Katz et al. 1978); for means v = s².
    Undefined when the control's mean is not positive; no interval when either is 0."""
    n1, m1, v1 = moments(treatment, metric)
    n0, m0, v0 = moments(control, metric)
    if m1 is None or m0 is None or m0 <= 0:
        return Estimate(None)
    ratio = m1 / m0
    if metric == "conversion":
        v1, v0 = m1 * (1 - m1), m0 * (1 - m0)
    if m1 <= 0 or v1 is None or v0 is None:
        return Estimate.of(ratio - 1)
    half = critical_z(confidence) * math.sqrt(v1 / (n1 * m1 * m1) + v0 / (n0 * m0 * m0))
    log_ratio = math.log(ratio)
    return Estimate.of(ratio - 1, math.expm1(log_ratio - half), math.expm1(log_ratio + half))


def fixed_horizon_p_value(
    treatment: ArmTotals, control: ArmTotals, *, metric: Metric
) -> float | None:
    """Two-sided p-value of a test run once, at a planned sample size.

    Rates: the pooled two-proportion z-test, z = (p₁ - p₀) / √(p̄(1 - p̄)(1/n₁ + 1/n₀)),
    whose z² is Pearson's χ² on the 2x2 table without Yates' correction (what Braze
    reports), so the p-values are identical. Means: Welch's z-test,
    z = (m₁ - m₀) / √(s₁²/n₁ + s₀²/n₀). None when there is no variation to test."""
    if metric == "conversion":
        n1, n0 = treatment.users, control.users
        if n1 == 0 or n0 == 0:
            return None
        pooled = (treatment.conversions + control.conversions) / (n1 + n0)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
        d = treatment.conversions / n1 - control.conversions / n0
    else:
        n1, m1, v1 = moments(treatment, metric)
        n0, m0, v0 = moments(control, metric)
        if m1 is None or m0 is None or v1 is None or v0 is None:
            return None
        se, d = math.sqrt(v1 / n1 + v0 / n0), m1 - m0
    return _two_sided_p(d / se) if se > 0 else None


@dataclass(frozen=True, slots=True)
class SequentialTest:
    """An always-valid interval for treatment minus control at this look."""

    difference: Estimate
    significant: bool  # the interval excludes 0
    planning_users: int
    rho: float


def sequence_rho(planning_users: int, *, confidence: float = CONFIDENCE) -> float:
    """The tuning parameter rho that makes the confidence sequence (nearly) tightest
    after `planning_users` users (t*): the closed form of Waudby-Smith et al. (2024),

        rho = √((-2 ln(alpha) + ln(1 - 2 ln(alpha))) / t*),

    one fixed-point step from the exact minimiser of the width at t*, which it misses
    by under 0.01% in width (at alpha = 0.05)."""
    if planning_users < 1:
        raise ValueError("planning_users must be at least 1")
    alpha = 1 - confidence
    return math.sqrt((-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / planning_users)


def sequence_multiplier(users: int, rho: float, *, confidence: float = CONFIDENCE) -> float:
    """The confidence sequence's half-width over the standard error at `users`
    (the fixed-horizon interval's multiplier is z, about 1.96)."""
    if users < 1 or rho <= 0:
        raise ValueError("users and rho must be positive")
    u = users * rho * rho
    return math.sqrt((u + 1) / u * (math.log(u + 1) - 2 * math.log(1 - confidence)))


def sequential_test(
    treatment: ArmTotals,
    control: ArmTotals,
    *,
    metric: Metric,
    planning_users: int,
    confidence: float = CONFIDENCE,
) -> SequentialTest:
    """An asymptotic confidence sequence for the difference in means of the per-user
    outcome (treatment minus control), valid at every look: looking daily, or after
    every user, does not raise the false-positive rate above alpha = 1 - confidence.
    "Significant" when the interval excludes 0.

    Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas (2024), "Time-uniform central limit
    theory and asymptotic confidence sequences", Annals of Statistics (arXiv
    2103.06476), Theorem 2.2: the two-sided Gaussian-mixture AsympCS at time t is

        mean_t ± S_t · √( 2(t·rho² + 1) / (t²·rho²) · ln(√(t·rho² + 1) / alpha) )

    with S_t² a consistent estimate of the variance of the summands. Applied as in
    their randomised-experiment section: with t = n₁ + n₀ users and the arm means as
    the outcome regression, the AIPW pseudo-outcome mean is the difference in means,
    and the variance of the pseudo-outcomes, V₁/π + V₀/(1 - π), is estimated by
    S_t² = t·(s₁²/n₁ + s₀²/n₀). So the half-width is se · `sequence_multiplier`, with
    se = √(s₁²/n₁ + s₀²/n₀), the fixed-horizon standard error. rho comes from
    `sequence_rho(planning_users)`, where `planning_users` is the two arms' users
    together at the look that matters most (the planned end). The guarantee is
    asymptotic: it holds as users grow, not with a handful per arm. For conversion the
    interval is cut to [-1, 1], where a difference of rates lies (which keeps coverage)."""
    rho = sequence_rho(planning_users, confidence=confidence)
    n1, m1, v1 = moments(treatment, metric)
    n0, m0, v0 = moments(control, metric)
    if m1 is None or m0 is None or v1 is None or v0 is None:
        return SequentialTest(Estimate(None), False, planning_users, rho)
    d = m1 - m0
    half = math.sqrt(v1 / n1 + v0 / n0) * sequence_multiplier(n1 + n0, rho, confidence=confidence)
    low, high = d - half, d + half
    if metric == "conversion":  # a difference of rates lies in [-1, 1]: clipping keeps coverage
        low, high = max(-1.0, low), min(1.0, high)
    interval = Estimate.of(d, low, high)
    significant = (
        interval.low is not None
        and interval.high is not None
        and (interval.low > 0 or interval.high < 0)
    )
    return SequentialTest(interval, significant, planning_users, rho)


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    """Observed users per arm against the configured shares (Pearson χ² goodness of fit)."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi_squared: float | None
    p_value: float | None
    mismatch: bool  # p < threshold
    threshold: float


def sample_ratio_mismatch(
    users: Sequence[int], shares: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SampleRatioCheck:
    """Whether users reached the arms in the configured shares (any positive weights).
    scipy.stats.chisquare, k - 1 degrees of freedom; a mismatch when p < threshold.
    Users in an arm configured with no share are a mismatch (p = 0); with no users, or
    one arm, there is nothing to test."""
    if len(users) != len(shares) or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise ValueError("one non-negative share per arm, not all zero")
    total = sum(users)
    expected = tuple(total * s / sum(shares) for s in shares)
    live = [i for i, s in enumerate(shares) if s > 0]
    observed = tuple(int(u) for u in users)
    if any(users[i] > 0 for i, s in enumerate(shares) if s == 0):
        return SampleRatioCheck(observed, expected, None, 0.0, True, threshold)
    if total == 0 or len(live) < 2:
        return SampleRatioCheck(observed, expected, None, None, False, threshold)
    result = stats.chisquare([users[i] for i in live], [expected[i] for i in live])
    chi, p = finite(result.statistic), finite(result.pvalue)
    return SampleRatioCheck(observed, expected, chi, p, p is not None and p < threshold, threshold)


@dataclass(frozen=True, slots=True)
class Lift:
    """One metric of one arm against the control."""

    metric: Metric
    absolute: Estimate
    relative: Estimate
    p_value: float | None  # the fixed-horizon test
    significant: bool  # p_value < alpha: only valid if looked at once, at the planned size
    sequential: SequentialTest
    minimum_detectable: DetectableEffect


@dataclass(frozen=True, slots=True)
class Comparison:
    arm: str
    control: str
    conversion: Lift
    revenue: Lift


def compare(
    treatment: ArmTotals,
    control: ArmTotals,
    *,
    planning_users: int,
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> Comparison:
    """Every comparison of an arm with the control, for conversion and revenue per user."""

    def lift(metric: Metric) -> Lift:
        p = fixed_horizon_p_value(treatment, control, metric=metric)
        return Lift(
            metric,
            difference(treatment, control, metric=metric, confidence=confidence),
            relative_lift(treatment, control, metric=metric, confidence=confidence),
            finite(p),
            p is not None and p < 1 - confidence,
            sequential_test(
                treatment,
                control,
                metric=metric,
                planning_users=planning_users,
                confidence=confidence,
            ),
            minimum_detectable_effect(
                control,
                treatment_users=treatment.users,
                metric=metric,
                alpha=1 - confidence,
                power=power,
            ),
        )

    return Comparison(treatment.arm, control.arm, lift("conversion"), lift("revenue"))


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    control: str
    arms: tuple[ArmSummary, ...]
    comparisons: tuple[Comparison, ...]
    sample_ratio: SampleRatioCheck | None  # None without configured shares
    users_needed: tuple[UsersNeeded, ...] = ()  # per arm, for lifts over the control's rate


def pair_planning_users(
    planning_users: int, weights: Sequence[float], arm: int, control: int
) -> int:
    """The part of an experiment's planned users that two of its arms get (by `weights`)."""
    return max(1, round(planning_users * (weights[arm] + weights[control]) / sum(weights)))


def analyse(
    arms: Sequence[ArmTotals],
    *,
    control: str,
    planning_users: int,
    shares: Sequence[float] | None = None,
    confidence: float = CONFIDENCE,
    power: float = POWER,
    srm_threshold: float = SRM_THRESHOLD,
) -> ExperimentReport:
    """The whole report of a fixed-split experiment, holdout or global control group:
    each arm's summary, each other arm against `control`, and the sample-ratio check
    against `shares` (the configured weights, in the order of `arms`).

    `planning_users` is the experiment's planned total; each comparison's confidence
    sequence is tuned for its two arms' part of it (by their shares, else equal)."""
    names = [a.arm for a in arms]
    if len(set(names)) != len(names) or control not in names:
        raise ValueError("arm names must be unique and include the control")
    weights = list(shares) if shares is not None else [1.0] * len(arms)
    if len(weights) != len(arms):
        raise ValueError("one share per arm")
    base = arms[names.index(control)]
    comparisons = tuple(
        compare(
            arm,
            base,
            confidence=confidence,
            power=power,
            planning_users=pair_planning_users(
                planning_users, weights, names.index(arm.arm), names.index(control)
            ),
        )
        for arm in arms
        if arm.arm != control
    )
    srm = None
    if shares is not None:
        srm = sample_ratio_mismatch([a.users for a in arms], shares, threshold=srm_threshold)
    summaries = tuple(summarise(a, confidence=confidence) for a in arms)
    needed = users_needed(base, alpha=1 - confidence, power=power)
    return ExperimentReport(control, summaries, comparisons, srm, needed)
