"""What the report pages show, worked out from a report: each arm's colour, interval
bars and time charts, and the sample-ratio check and each lift put in words (the
verdict leads with the always-valid interval: a marketer looks every day)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.reports import charts, service
from orchestrator.reports.formats import p_value, points
from orchestrator.reports.statistics import Comparison

KINDS = {"holdout": "Holdout", "experiment": "Experiment", "template": "Template test",
         "global_control": "Global control group"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SampleRatio:
    state: Literal["mismatch", "ok", "unchecked", "empty", "bandit"]
    headline: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    state: Literal["distrust", "no-data", "better", "worse", "promising", "inconclusive"]
    text: str


@dataclass(frozen=True, slots=True)
class ComparisonView:
    comparison: Comparison
    verdict: Verdict
    bars: tuple[charts.IntervalBar, ...]  # the fixed interval, then the always-valid one
    scale: charts.Axis


@dataclass(frozen=True, slots=True)
class ExperimentView:
    sample_ratio: SampleRatio
    slots: dict[str, int]  # each arm's colour
    rate_bars: tuple[charts.IntervalBar, ...]  # one per arm of the analysis
    rate_scale: charts.Axis | None
    comparisons: tuple[ComparisonView, ...]
    rates: charts.TimeChart | None
    difference: charts.TimeChart | None
    difference_of: str  # "treatment minus control", as the chart names it


def experiment_view(result: service.ExperimentResult) -> ExperimentView:
    srm = sample_ratio(result)
    names = [a.arm for a in result.analysis.arms] if result.analysis else []
    names += [b.arm for b in result.bandit or ()]
    names += [a.arm for a in result.timeline[0].arms] if result.timeline else []
    ordered = [result.control, *(a for a in dict.fromkeys(names) if a != result.control)]
    slots = {arm: n for n, arm in enumerate(ordered)}
    rate_bars: tuple[charts.IntervalBar, ...] = ()
    rate_scale = None
    comparisons = []
    if result.analysis is not None:
        rates = [a.conversion_rate for a in result.analysis.arms]
        rate_bars, rate_scale = charts.interval_bars(rates, within=(0, 1), zero=False)
        for c in result.analysis.comparisons:
            shown = [c.conversion.absolute, c.conversion.sequential.difference]
            bars, scale = charts.interval_bars(shown, within=(-1, 1), zero=True)
            comparisons.append(ComparisonView(c, verdict(c, srm), bars, scale))
    rate_chart, difference_chart, treatment = _time_charts(result, slots)
    difference_of = f"{treatment} \N{MINUS SIGN} {result.control}" if treatment else ""
    return ExperimentView(srm, slots, rate_bars, rate_scale, tuple(comparisons), rate_chart,
                          difference_chart, difference_of)  # fmt: skip


def _time_charts(
    result: service.ExperimentResult, slots: dict[str, int]
) -> tuple[charts.TimeChart | None, charts.TimeChart | None, str]:
    """Each arm's cumulative rate by day, and the always-valid difference of the first
    arm against the control (the one the timeline carries), with its name."""
    if not result.timeline or result.bandit is not None:
        return None, None, ""  # a bandit's raw rates are not comparable between arms
    days = [p.day for p in result.timeline]
    arms = [a.arm for a in result.timeline[0].arms]
    series = [charts.Series(arm, slots[arm], [p.arms[i].conversion_rate for p in result.timeline])
              for i, arm in enumerate(arms)]  # fmt: skip
    rates = charts.time_chart(days, series, within=(0, 1), signed=False)
    treatment = next((a for a in arms if a != result.control), None)
    if treatment is None or not any(p.difference for p in result.timeline):
        return rates, None, ""
    difference = charts.Series("difference", slots[treatment],
                               [p.difference for p in result.timeline])  # fmt: skip
    return rates, charts.time_chart(days, [difference], within=(-1, 1), signed=True), treatment


def sample_ratio(result: service.ExperimentResult) -> SampleRatio:
    """Whether users reached the arms as configured, in words: read before the rest."""
    if result.mode == "bandit":
        return SampleRatio("bandit", "Split not checked: this is a bandit",
                           "A bandit moves users towards the arms that do well, on purpose, "
                           "so there is no fixed split to check.")  # fmt: skip
    analysis = result.analysis
    if analysis is None:
        return SampleRatio("empty", "No users yet", "Nobody has been assigned to an arm.")
    check = analysis.sample_ratio
    if check is None:
        return SampleRatio("unchecked", "Split not checked",
                           "There is no one configured split to check against (a template "
                           "test, or arms changed since it started).")  # fmt: skip
    if check.p_value is None:
        return SampleRatio("unchecked", "Split not checked yet",
                           "Too few users, or only one arm with any share.")  # fmt: skip
    if check.mismatch:
        return SampleRatio("mismatch", "Sample ratio mismatch: distrust every number below",
                           f"Users did not reach the arms in the configured split (p = "
                           f"{p_value(check.p_value)}, below {check.threshold:g}). Something "
                           "assigns or records users unevenly; find it before reading any "
                           "result.")  # fmt: skip
    return SampleRatio("ok", "The split is as configured",
                       f"Users reached the arms in the configured shares (p = "
                       f"{p_value(check.p_value)}): the results below can be trusted as far "
                       "as their intervals go.")  # fmt: skip


def verdict(c: Comparison, srm: SampleRatio) -> Verdict:
    """What the conversion lift means, in plain words, led by the always-valid interval
    (a marketer looks every day; the fixed-horizon test holds for one look only)."""
    lift, sequential = c.conversion, c.conversion.sequential
    if srm.state == "mismatch":
        return Verdict("distrust", "Do not act on this: the split is not what was configured.")
    if sequential.difference.value is None or lift.absolute.value is None:
        return Verdict("no-data", f"Not enough data yet: {c.arm} and {c.control} both need "
                                  "users, and some of them converting.")  # fmt: skip
    change = f"{points(lift.absolute.value)} points"
    if sequential.significant:
        better = sequential.difference.value > 0
        return Verdict("better" if better else "worse",
                       f"{c.arm} converts {'better' if better else 'worse'} than {c.control} "
                       f"({change}). The always-valid interval leaves out zero, so this "
                       "holds however often the report was looked at.")  # fmt: skip
    if lift.significant:
        return Verdict("promising",
                       f"Promising, not proven: {change}, and the one-look test gives p = "
                       f"{p_value(lift.p_value)}, but that holds only when read once at the "
                       "planned size. The always-valid interval still includes zero: keep "
                       "it running.")  # fmt: skip
    detectable = lift.minimum_detectable.absolute
    unnoticed = (f" With the users so far, even the one-look test would likely miss a "
                 f"change smaller than about {points(detectable)} points."
                 if detectable is not None else "")  # fmt: skip
    return Verdict("inconclusive", f"No difference shown yet ({change}): the always-valid "
                                   f"interval includes zero.{unnoticed}")  # fmt: skip
