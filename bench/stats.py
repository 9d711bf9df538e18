"""The report statistics by simulation: every figure comes through `orchestrator.reports`.

A/A experiments with the fixed-horizon test; A/A experiments looked at daily for 30
days with the sequential test and, for contrast, the fixed test repeated; sample-ratio
checks; the regret of the product's own Thompson sampler against an equal split and an
oracle; the coverage of off-policy intervals. No stack, no database: numpy draws the
users, with fixed seeds, so a run prints the same figures every time.

    .venv/bin/python -m bench.stats [--seed 20261127]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

from orchestrator.reports import offpolicy
from orchestrator.reports.estimates import ArmTotals
from orchestrator.reports.statistics import (
    fixed_horizon_p_value,
    sample_ratio_mismatch,
    sequential_test,
)
from workflows.assignment import thompson

RATE = 0.05  # baseline conversion rate
LOG_MEAN, LOG_SD = 3.5, 1.0  # revenue of a converted user: lognormal (mean about 55)
Row = tuple[str, str, str]


def arms_of(
    rng: np.random.Generator, users: np.ndarray, rates: tuple[float, float]
) -> list[tuple[ArmTotals, ArmTotals]]:
    """Per run (and look), the totals of two arms with the given users; converted users
    spend lognormal revenue. `users` has shape (..., 2); totals accumulate along axis 1
    when it has looks."""
    converted = rng.binomial(users, rates)
    spend = rng.lognormal(LOG_MEAN, LOG_SD, size=int(converted.sum()))
    group = np.repeat(np.arange(converted.size), converted.ravel())
    revenue = np.bincount(group, spend, minlength=converted.size).reshape(converted.shape)
    squares = np.bincount(group, spend**2, minlength=converted.size).reshape(converted.shape)
    if users.ndim == 3:  # runs x looks x arms: totals so far at each look
        users, converted = users.cumsum(axis=1), converted.cumsum(axis=1)
        revenue, squares = revenue.cumsum(axis=1), squares.cumsum(axis=1)
    flat = [a.reshape(-1, 2) for a in (users, converted, revenue, squares)]
    return [
        (
            ArmTotals("b", int(n[1]), int(c[1]), float(r[1]), float(s[1])),
            ArmTotals("a", int(n[0]), int(c[0]), float(r[0]), float(s[0])),
        )
        for n, c, r, s in zip(*flat, strict=True)
    ]


def split_users(rng: np.random.Generator, total: int, shape: tuple[int, ...]) -> np.ndarray:
    """Users randomised one by one with probability 1/2: (..., 2) counts per arm."""
    first = rng.binomial(total, 0.5, size=shape)
    return np.stack([first, total - first], axis=-1)


def significant(p: float | None) -> bool:
    return p is not None and p < 0.05


def fixed_horizon(rng: np.random.Generator, runs: tuple[int, ...], users: int) -> list[Row]:
    """A/A at a fixed horizon: the asked-for number of runs, then more for a tighter
    figure (1,000 runs alone put the rate within ±0.7 points of the truth, one s.e.)."""
    rows = []
    for count in runs:
        pairs = arms_of(rng, split_users(rng, users, (count,)), (RATE, RATE))
        for metric in ("conversion", "revenue"):
            p_values = [fixed_horizon_p_value(b, a, metric=metric) for b, a in pairs]
            rate = float(np.mean([significant(p) for p in p_values]))
            what = f"A/A fixed horizon, {metric}: {count:,} runs x {users:,} users"
            rows.append((what, f"{rate:.1%} false positives (s.e. {mc(rate, count)})", "4-6%"))
    # the exact size of the conversion test at half the users per arm: the probability
    # of every pair of conversion counts the test rejects, summed
    n = users // 2
    sd = (n * RATE * (1 - RATE)) ** 0.5
    grid = np.arange(int(n * RATE - 9 * sd), int(n * RATE + 9 * sd) + 1)
    pmf = stats.binom.pmf(grid, n, RATE)
    size = 0.0
    for i, x in enumerate(grid):
        for j, y in enumerate(grid):
            one, zero = ArmTotals("b", n, int(x)), ArmTotals("a", n, int(y))
            if significant(fixed_horizon_p_value(one, zero, metric="conversion")):
                size += pmf[i] * pmf[j]
    rows.append((f"  exact size of the conversion test, {n:,} per arm", f"{size:.2%}", "5%"))
    return rows


def daily_looks(rng: np.random.Generator, runs: int, days: int, daily: int) -> list[Row]:
    """A/A: how often either test ever calls a difference over the looks. A/B with a
    real lift, for the price of looking: how often the sequential test finds it by the
    last day, against the fixed test run once on the last day."""
    rows = []
    for lift in (1.0, 1.1):
        pairs = arms_of(rng, split_users(rng, daily, (runs, days)), (RATE, RATE * lift))
        for metric in ("conversion", "revenue"):
            sequential = naive = final = 0
            for run in range(runs):
                looks = pairs[run * days : (run + 1) * days]
                sequential += any(
                    sequential_test(b, a, metric=metric, planning_users=days * daily).significant
                    for b, a in looks
                )
                p_values = [fixed_horizon_p_value(b, a, metric=metric) for b, a in looks]
                naive += any(significant(p) for p in p_values)
                final += significant(p_values[-1])
            setup = f"{days} daily looks, {runs:,} runs x {days * daily:,} users"
            if lift == 1.0:
                rows.append(
                    (
                        f"A/A {metric}, {setup}",
                        f"sequential {sequential / runs:.1%} false positives",
                        "at most 5%",
                    )
                )
                rows.append(("", f"fixed test repeated daily {naive / runs:.1%}", "well above 5%"))
            else:
                rows.append(
                    (
                        f"A/B +10% {metric} (5% vs 5.5%), {setup}",
                        f"sequential finds it in {sequential / runs:.1%}; fixed test "
                        f"once on day {days}: {final / runs:.1%}",
                        "",
                    )
                )
    return rows


def sample_ratio(rng: np.random.Generator, runs: int, quiet_runs: int, users: int) -> list[Row]:
    rows = []
    for share, label, target in (
        (0.51, "51/49 (one percentage point)", "at least 90%"),
        (0.505, "50.5/49.5 (1% of 50, relative)", ""),
    ):
        first = rng.binomial(users, share, size=runs)
        flagged = sum(
            sample_ratio_mismatch([int(f), users - int(f)], [50, 50]).mismatch for f in first
        )
        rows.append(
            (
                f"sample ratio {label} vs 50/50, {users:,} users, {runs:,} runs",
                f"{flagged / runs:.1%} flagged",
                target,
            )
        )
    first = rng.binomial(users, 0.5, size=quiet_runs)
    alarms = sum(sample_ratio_mismatch([int(f), users - int(f)], [50, 50]).mismatch for f in first)
    # exact: flagged when |first - users/2| is at least the smallest gap the check flags
    gap = next(
        g
        for g in range(users // 2)
        if sample_ratio_mismatch([users // 2 + g, users - users // 2 - g], [1, 1]).mismatch
    )
    exact = 2 * stats.binom.sf(users // 2 + gap - 1, users, 0.5)
    rows.append(
        (
            f"sample ratio 50/50 vs 50/50 (false alarms), {quiet_runs:,} runs",
            f"{alarms / quiet_runs:.3%} (s.e. {mc(alarms / quiet_runs, quiet_runs, 3)}); "
            f"exact {exact:.4%}",
            "at most 0.1%",
        )
    )
    return rows


def bandit(seeds: int, users: int, rates: tuple[float, ...], min_share: float) -> list[Row]:
    """The product's sampler, its (trials, successes) updated after every user (each
    conversion arrives before the next user). Regret: expected conversions lost against
    always giving the best arm, sum over users of best rate - chosen arm's rate."""
    best = max(rates)
    regret, best_share = [], []
    for seed in range(seeds):
        rng = random.Random(seed)
        stats_ = [[0, 0] for _ in rates]
        lost = 0.0
        for _ in range(users):
            arm = thompson([(t, w) for t, w in stats_], min_share=min_share, rng=rng)
            stats_[arm][0] += 1
            stats_[arm][1] += rng.random() < rates[arm]
            lost += best - rates[arm]
        regret.append(lost)
        best_share.append(stats_[rates.index(best)][0] / users)
    equal = users * (best - sum(rates) / len(rates))
    mean, sd = float(np.mean(regret)), float(np.std(regret))
    return [
        (
            f"Thompson, min_share {min_share}, rates {'/'.join(f'{r:.0%}' for r in rates)}, "
            f"{users:,} users, {seeds} seeds",
            f"regret {mean:.0f} ± {sd:.0f} conversions (equal split {equal:.0f}, oracle 0); "
            f"{np.mean(best_share):.0%} of users on the best arm",
            "",
        )
    ]


# Off-policy: two kinds of user, three arms, a logging policy that favours a different
# arm for each kind; a reward model that is right on average but flattened.
RATES = np.array([[0.04, 0.05, 0.06], [0.10, 0.07, 0.05]])
LOGGING = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
KIND_1 = 0.4
PERSONAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def off_policy(rng: np.random.Generator, runs: int, rows: int, resamples: int) -> list[Row]:
    weights = np.array([1 - KIND_1, KIND_1])
    targets: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "always B": lambda kind: offpolicy.always(1, 3),
        "split 1:1:2": lambda kind: offpolicy.split([1, 1, 2]),
        "per kind of user": lambda kind: PERSONAL[kind],
    }
    truth = {
        "always B": float(weights @ RATES[:, 1]),
        "split 1:1:2": float(weights @ (RATES @ offpolicy.split([1, 1, 2]))),
        "per kind of user": float(weights @ (RATES * PERSONAL).sum(axis=1)),
    }
    model = 0.5 * RATES + 0.5 * RATES.mean()
    out = []
    for name, target in targets.items():
        found: dict[str, list[tuple[float, bool]]] = {"IPS": [], "SNIPS": [], "DR": []}
        for _ in range(runs):
            kind = (rng.random(rows) < KIND_1).astype(int)
            chosen = (rng.random(rows)[:, np.newaxis] > LOGGING[kind].cumsum(axis=1)).sum(axis=1)
            reward = (rng.random(rows) < RATES[kind, chosen]).astype(float)
            report = offpolicy.evaluate(
                chosen=chosen,
                propensity=LOGGING[kind, chosen],
                reward=reward,
                target=target(kind),
                predictions=model[kind],
                rng=rng,
                resamples=resamples,
            )
            assert report.doubly_robust is not None
            for key, e in (
                ("IPS", report.ips),
                ("SNIPS", report.snips),
                ("DR", report.doubly_robust),
            ):
                assert e.value is not None
                assert e.low is not None
                assert e.high is not None
                found[key].append((e.value, e.low <= truth[name] <= e.high))
        cells = []
        for key, results in found.items():
            values = np.array([v for v, _ in results])
            cover = np.mean([c for _, c in results])
            cells.append(f"{key} {cover:.1%} (bias {values.mean() - truth[name]:+.4f})")
        out.append(
            (
                f"off-policy '{name}' (true {truth[name]:.4f}), {runs} logs x {rows:,} "
                f"rows, {resamples:,} resamples",
                ", ".join(cells),
                "about 95%",
            )
        )
    return out


EXAMINE = np.array([0.3, 0.2, 0.1])  # position-based click model: P(click) = examine x attract
ATTRACT = np.array([0.5, 0.4, 0.3, 0.3, 0.2, 0.1])
BASE, TARGET, EXPLORE = np.array([0, 1, 2]), np.array([3, 0, 4]), 0.2


def ranking(rng: np.random.Generator, runs: int, impressions: int, resamples: int) -> list[Row]:
    truth = float((EXAMINE * ATTRACT[TARGET]).sum())
    values, covered = [], 0
    for _ in range(runs):
        explored = rng.random(impressions) < EXPLORE
        shuffled = np.argsort(rng.random((impressions, len(ATTRACT))), axis=1)[:, :3]
        slates = np.where(explored[:, np.newaxis], shuffled, BASE)
        logging = (1 - EXPLORE) * (slates == BASE) + EXPLORE / len(ATTRACT)
        clicks = rng.random(slates.shape) < EXAMINE * ATTRACT[slates]
        got = offpolicy.ranking_ips(
            impression=np.repeat(np.arange(impressions), 3),
            logging_probability=logging.ravel(),
            target_probability=(slates == TARGET).ravel().astype(float),
            reward=clicks.ravel().astype(float),
            rng=rng,
            resamples=resamples,
        )
        assert got.value is not None
        assert got.low is not None
        assert got.high is not None
        values.append(got.value)
        covered += got.low <= truth <= got.high
    return [
        (
            f"ranking IPS (true {truth:.3f} clicks per impression, explore {EXPLORE:.0%}), "
            f"{runs} logs x {impressions:,} impressions",
            f"{covered / runs:.1%} covered (bias {np.mean(values) - truth:+.4f})",
            "about 95%",
        )
    ]


def mc(rate: float, runs: int, digits: int = 1) -> str:
    """The Monte Carlo standard error of a simulated rate, as a percentage."""
    return f"{(rate * (1 - rate) / runs) ** 0.5:.{digits}%}"


def main(seed: int) -> None:
    def rng(section: int) -> np.random.Generator:
        """Each section its own stream, so changing one leaves the others' figures."""
        return np.random.default_rng([seed, section])

    sections: list[tuple[str, Callable[[], list[Row]]]] = [
        ("fixed horizon", lambda: fixed_horizon(rng(1), (1000, 10_000), 10_000)),
        ("daily looks", lambda: daily_looks(rng(2), 1000, 30, 1000)),
        ("sample ratio", lambda: sample_ratio(rng(3), 1000, 20_000, 100_000)),
        ("bandit", lambda: bandit(20, 20_000, (0.04, 0.05, 0.06), 0.1)),
        ("bandit without a floor", lambda: bandit(20, 20_000, (0.04, 0.05, 0.06), 0.0)),
        ("off-policy", lambda: off_policy(rng(4), 300, 2000, 1000)),
        ("ranking", lambda: ranking(rng(5), 300, 2000, 1000)),
    ]
    started = time.perf_counter()
    table: list[Row] = []
    for name, run in sections:
        begun = time.perf_counter()
        table.extend(run())
        print(f"[{name}: {time.perf_counter() - begun:.1f} s]")
    width = max(len(what) for what, _, _ in table)
    print(f"\n{'what':<{width}}  result  [target]")
    for what, result, target in table:
        print(f"{what:<{width}}  {result}" + (f"  [{target}]" if target else ""))
    print(f"\ntook {time.perf_counter() - started:.0f} s (seed {seed})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=20261127)
    main(parser.parse_args().seed)
