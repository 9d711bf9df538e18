"""Metrics by group: each group's mean with a bootstrap interval, and a flag when a
group is served clearly worse than the other users.

Pure functions over per-user values (`Metrics.users` offline, or any per-user figure
online, such as each user's click rate) and a user -> group mapping; no I/O, and the
bootstrap is seeded. A group is flagged worse on a metric when both hold:

    significant  Welch's t-test, one-sided (the group's mean below the other users'),
                 its p-value Holm-adjusted across the groups tested on that metric
    large        the group's mean is at least `gap` (default 20%) below the others'

Groups under `min_users` are folded into "other"; when "other" is still under it, it
is reported (mean and interval) but not tested. A numeric trait is grouped in bands:
`bands=[25, 35, 50, 65]` gives "<25", "25-34", "35-49", "50-64" and "65+" (edges
that are not whole numbers give "[2.5, 5)" and the like).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

OTHER = "other"


# The most groups a stored or served breakdown (a card, the monitor) compares.
MAX_GROUPS = 50


class GroupingError(ValueError):
    """The trait cannot be grouped (too many distinct values)."""


@dataclass(frozen=True)
class GroupMetric:
    mean: float
    low: float  # the interval around `mean` (percentile bootstrap over the group's users)
    high: float
    rest: float | None = None  # the other users' mean; None when the group is not tested
    gap: float | None = None  # relative: mean / rest - 1 (-0.25 is 25% below the rest)
    p_value: float | None = None  # one-sided, Holm-adjusted across the groups
    worse: bool = False


@dataclass(frozen=True)
class Group:
    name: str
    users: int
    metrics: dict[str, GroupMetric]
    folded: tuple[str, ...] = ()  # for "other": the small groups it holds, when named
    tested: bool = True  # False: too few users to compare
    folded_groups: int = 0  # for "other": how many small groups it holds

    @property
    def worse(self) -> list[str]:
        """The metrics on which this group is served clearly worse than the rest."""
        return [name for name, metric in self.metrics.items() if metric.worse]


@dataclass(frozen=True)
class GroupReport:
    metrics: list[str]
    groups: list[Group]  # largest first, "other" last
    ungrouped: int  # users with values but no group (no value, or not a number with bands)
    min_users: int
    gap: float
    alpha: float
    confidence: float
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (group, metric)


def band_labels(bands: Sequence[float]) -> list[str]:
    """The label of each band, in order: below the first edge, between edges, and from
    the last edge up."""
    edges = list(bands)
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("bands must be increasing numbers, e.g. 25,35,50,65")
    whole = all(float(e).is_integer() for e in edges)
    labels = [f"<{edges[0]:g}"]
    for low, high in itertools.pairwise(edges):
        labels.append(f"{low:g}-{high - 1:g}" if whole else f"[{low:g}, {high:g})")
    labels.append(f"{edges[-1]:g}+")
    return labels


def parse_bands(text: str) -> list[float]:
    """Band edges from "25,35,50,65"; ValueError saying what is wrong."""
    try:
        edges = [float(part) for part in text.split(",")]
        band_labels(edges)
    except ValueError:
        raise ValueError(f"{text!r} is not increasing numbers, e.g. 25,35,50,65") from None
    return edges


def band_of(value: float, bands: Sequence[float], labels: Sequence[str]) -> str:
    position = sum(value >= edge for edge in bands)
    return labels[position]


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label(value: object, bands: Sequence[float] | None, labels: Sequence[str]) -> str | None:
    if bands is None:
        text = None if value is None else str(value).strip()
        return text or None
    number = _numeric(value)
    return None if number is None else band_of(number, bands, labels)


def _bootstrap(values: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float
               ) -> tuple[float, float]:  # fmt: skip
    means = np.empty(resamples)
    # In chunks, so a group of many thousands does not hold resamples x users at once.
    chunk = max(1, 2_000_000 // max(1, len(values)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picks = rng.integers(0, len(values), size=(size, len(values)))
        means[start : start + size] = values[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def welch_less(group: np.ndarray, rest: np.ndarray) -> float:
    """One-sided p-value of Welch's t-test that the group's mean is below the rest's."""
    difference = float(group.mean() - rest.mean())
    a = float(group.var(ddof=1)) / len(group) if len(group) > 1 else 0.0
    b = float(rest.var(ddof=1)) / len(rest) if len(rest) > 1 else 0.0
    if a + b == 0:  # no variation on either side: the means say it all
        return 0.0 if difference < 0 else 1.0
    t = difference / math.sqrt(a + b)
    parts = (a * a / (len(group) - 1) if len(group) > 1 else 0.0) + (
        b * b / (len(rest) - 1) if len(rest) > 1 else 0.0
    )
    df = (a + b) ** 2 / parts if parts > 0 else float("inf")
    return float(stats.t.cdf(t, df))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: each p-value as it must be read against alpha."""
    order = sorted(range(len(p_values)), key=lambda n: p_values[n])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, n in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[n]))
        adjusted[n] = running
    return adjusted


def by_group(
    values: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, object],
    *,
    metrics: Sequence[str] | None = None,
    bands: Sequence[float] | None = None,
    min_users: int = 30,
    gap: float = 0.2,
    alpha: float = 0.05,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    max_groups: int | None = None,
    name_folded: bool = True,
) -> GroupReport:
    """Each group's mean of each metric with an interval, and the groups served
    clearly worse than the rest. `values` holds each user's metrics; `groups` each
    user's trait value (a number when `bands` are given). With `max_groups`, a trait
    of more distinct values is refused (GroupingError: an email address is no group);
    without `name_folded`, "other" counts the small groups it holds without naming
    them (a value shared by few users may say who they are)."""
    if min_users < 2:
        raise ValueError("min_users must be at least 2")
    if not 0 < gap < 1:
        raise ValueError("gap is a relative difference between 0 and 1, e.g. 0.2")
    labels = band_labels(bands) if bands is not None else []
    names = list(metrics) if metrics is not None else list(next(iter(values.values()), {}))
    members: dict[str, list[str]] = defaultdict(list)
    ungrouped = 0
    for user in values:
        label = _label(groups.get(user), bands, labels)
        if label is None:
            ungrouped += 1
        else:
            members[label].append(user)
    sizes = Counter({label: len(users) for label, users in members.items()})
    if max_groups is not None and len(sizes) > max_groups:
        raise GroupingError(
            f"{len(sizes):,} distinct values: at most {max_groups} groups can be compared"
        )
    small = sorted(label for label, size in sizes.items() if size < min_users and label != OTHER)
    for label in small:
        members[OTHER].extend(members.pop(label))
    order = [label for label, _ in sorted(sizes.items(), key=lambda p: (-p[1], p[0]))
             if label in members and label != OTHER]  # fmt: skip
    if OTHER in members:
        order.append(OTHER)
    tested = {label for label in order if len(members[label]) >= min_users}
    grouped = [user for label in order for user in members[label]]

    rng = np.random.default_rng(seed)
    found: dict[str, dict[str, GroupMetric]] = {label: {} for label in order}
    flagged: list[tuple[str, str]] = []
    for metric in names:
        column = {user: float(values[user][metric]) for user in grouped}
        comparisons: dict[str, tuple[float, float]] = {}  # label -> (rest mean, p)
        for label in order:
            mine = np.array([column[u] for u in members[label]])
            low, high = _bootstrap(mine, rng, resamples, confidence)
            found[label][metric] = GroupMetric(float(mine.mean()), low, high)
            inside = set(members[label])
            rest = np.array([column[u] for u in grouped if u not in inside])
            if label in tested and len(rest) >= 2:
                comparisons[label] = (float(rest.mean()), welch_less(mine, rest))
        adjusted = holm([p for _, p in comparisons.values()])
        for (label, (rest_mean, _)), p in zip(comparisons.items(), adjusted, strict=True):
            own = found[label][metric]
            relative = own.mean / rest_mean - 1 if rest_mean > 0 else None
            worse = p < alpha and relative is not None and relative <= -gap
            found[label][metric] = GroupMetric(
                own.mean, own.low, own.high, rest_mean, relative, p, worse
            )
            if worse:
                flagged.append((label, metric))
    return GroupReport(
        metrics=names,
        groups=[
            Group(
                name=label,
                users=len(members[label]),
                metrics=found[label],
                folded=tuple(small) if label == OTHER and name_folded else (),
                folded_groups=len(small) if label == OTHER else 0,
                tested=label in tested,
            )
            for label in order
        ],
        ungrouped=ungrouped,
        min_users=min_users,
        gap=gap,
        alpha=alpha,
        confidence=confidence,
        flagged=flagged,
    )


def table(report: GroupReport) -> str:
    """A Markdown table: one row per group, each metric's mean with its interval; a
    metric on which the group is served clearly worse is marked `WORSE`."""
    lines = [
        "| group | users | " + " | ".join(report.metrics) + " |",
        "| --- | --- |" + " --- |" * len(report.metrics),
    ]
    for group in report.groups:
        cells = []
        for name in report.metrics:
            metric = group.metrics[name]
            cell = f"{metric.mean:.4f} ({metric.low:.4f}-{metric.high:.4f})"
            if metric.worse:
                cell += f" WORSE {metric.gap:+.0%}"
            cells.append(cell)
        name = group.name if group.tested else f"{group.name} (too few to compare)"
        lines.append(f"| {name} | {group.users:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(report: GroupReport, *, title: str) -> str:
    """The report as a reader sees it: what was compared, the table, which groups
    were folded or left out, and the groups served clearly worse."""
    lines = [
        f"{title} (mean and {report.confidence:.0%} bootstrap interval per group; groups "
        f"under {report.min_users} users folded into 'other'; WORSE: at least "
        f"{report.gap:.0%} below the other users, Welch p < {report.alpha} after Holm):",
        "",
        table(report),
    ]
    for group in report.groups:
        if group.folded:
            lines.append(f"{group.name}: {', '.join(group.folded)}")
        elif group.folded_groups:
            lines.append(f"{group.name}: {group.folded_groups} smaller groups")
    if report.ungrouped:
        lines.append(f"{report.ungrouped:,} users have no value for the trait and are left out")
    for name, metric in report.flagged:
        found = next(g for g in report.groups if g.name == name).metrics[metric]
        lines.append(
            f"served worse: {name} on {metric}: {found.mean:.4f} against {found.rest:.4f} "
            f"for the other users ({found.gap:+.0%}, p {found.p_value:.2g})"
        )
    if not report.flagged:
        lines.append("no group is served clearly worse than the rest")
    return "\n".join(lines)


_SCALARS = ("metrics", "ungrouped", "min_users", "gap", "alpha", "confidence")


def from_dict(stored: Mapping[str, Any]) -> GroupReport:
    """A report stored as `dataclasses.asdict` made it (a model card's `by_group`)."""
    groups = [
        Group(
            name=g["name"],
            users=g["users"],
            metrics={m: GroupMetric(**v) for m, v in g["metrics"].items()},
            folded=tuple(g["folded"]),
            folded_groups=g.get("folded_groups", len(g["folded"])),
            tested=g["tested"],
        )
        for g in stored["groups"]
    ]
    fields = {k: v for k, v in stored.items() if k in _SCALARS}
    return GroupReport(
        groups=groups, flagged=[(name, metric) for name, metric in stored["flagged"]], **fields
    )
