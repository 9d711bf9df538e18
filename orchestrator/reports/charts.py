"""Chart geometry for the report pages: estimates in, SVG coordinates and path data out.

Pure and markup-free: the pages' templates draw the SVG from what this computes, and
print every user-given name there, autoescaped. Two shapes:

    interval bars   one axis shared by a few estimates (the arms' rates, the lifts),
                    each a point on its interval, with zero marked when in range
    time chart      one line per series over days, each with its interval as a band
                    (runs of defined values; an undefined day breaks the line)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date

from orchestrator.reports.estimates import Estimate

BAR_WIDTH = 240
BAR_END = 5  # room at either end for a point's dot
CHART_WIDTH, CHART_HEIGHT = 760, 300
# Room for the y-axis labels on the left, the dates below, the end labels on the right.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 110, 14, 30
# Half the width of a lone day's band, so that one day still shows its interval.
LONE_DAY = 8.0
DATE_TICKS = 6  # at most
LABEL_GAP = 14.0  # between the end labels' baselines


@dataclass(frozen=True, slots=True)
class Axis:
    low: float
    high: float
    ticks: tuple[float, ...]
    step: float

    def at(self, value: float, start: float, end: float) -> float:
        """Where `value` falls between the pixel positions `start` (low) and `end`; beyond
        the axis (an interval wider than what can happen), at its edge."""
        kept = min(max(value, self.low), self.high)
        return start + (kept - self.low) / (self.high - self.low) * (end - start)

    def label(self, value: float, *, signed: bool) -> str:
        """A tick as a percentage (or signed percentage points), as precise as the step."""
        shown = 100 * self.step
        decimals = next(
            d for d in range(6) if abs(round(shown, d) - shown) < 1e-9 * shown or d == 5
        )
        return f"{100 * value:{'+' if signed and value else ''}.{decimals}f}" + (
            "" if signed else "%"
        )


def axis(
    values: Iterable[float], *, within: tuple[float, float] | None, zero: bool, ticks: int = 5
) -> Axis:
    """A range holding `values` (and 0 with `zero`) on round steps, kept `within`."""
    found = [v for v in values if math.isfinite(v)] + ([0.0] if zero else [])
    low, high = (min(found), max(found)) if found else (0.0, 1.0)
    if within is not None:  # the steps suit what is shown, not an interval past the edge
        low, high = max(low, within[0]), min(high, within[1])
    if high - low < 1e-9:
        low, high = low - 0.01, high + 0.01
    raw = (high - low) / max(1, ticks - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    if within is not None:
        low, high = max(low, within[0]), min(high, within[1])
    count = round((high - low) / step)
    marks = tuple(round(low + i * step, 12) for i in range(count + 1)
                  if low + i * step <= high + 1e-12)  # fmt: skip
    return Axis(low, high, marks, step)


@dataclass(frozen=True, slots=True)
class IntervalBar:
    """x positions on a bar BAR_WIDTH wide; None where the estimate lacks that part."""

    value: float | None
    low: float | None
    high: float | None
    zero: float | None


def interval_bars(
    estimates: Sequence[Estimate], *, within: tuple[float, float] | None, zero: bool
) -> tuple[tuple[IntervalBar, ...], Axis]:
    """The estimates on one shared axis (so their intervals can be compared by eye)."""
    scale = axis(
        (v for e in estimates for v in (e.value, e.low, e.high) if v is not None),
        within=within,
        zero=zero,
    )

    def x(value: float | None) -> float | None:
        return None if value is None else round(scale.at(value, BAR_END, BAR_WIDTH - BAR_END), 2)

    origin = x(0.0) if scale.low <= 0 <= scale.high and zero else None
    return tuple(IntervalBar(x(e.value), x(e.low), x(e.high), origin) for e in estimates), scale


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    slot: int  # its colour, the same as in the page's other charts and tables
    path: str  # SVG path data of the line
    band: str  # closed SVG path data of its interval
    end: tuple[float, float] | None  # its last point
    label_y: float  # where its name goes, beside the end, clear of the other names


@dataclass(frozen=True, slots=True)
class TimeChart:
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    zero: float | None  # the y of 0, when the axis holds it


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    slot: int
    values: Sequence[Estimate | None]  # one per day


def time_chart(
    days: Sequence[date],
    series: Sequence[Series],
    *,
    within: tuple[float, float] | None,
    signed: bool,
) -> TimeChart:
    """Each series over the days, its band from each day's interval."""
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = CHART_WIDTH - MARGIN_RIGHT, CHART_HEIGHT - MARGIN_BOTTOM
    found = [e for s in series for e in s.values if e is not None]
    scale = axis(
        (v for e in found for v in (e.value, e.low, e.high) if v is not None),
        within=within,
        zero=signed,
    )

    def x(i: int) -> float:
        return (left + right) / 2 if len(days) < 2 else left + i * (right - left) / (len(days) - 1)

    def y(value: float) -> float:
        return round(scale.at(value, bottom, top), 2)

    lines = []
    for s in series:
        runs: list[list[tuple[int, Estimate]]] = [[]]
        for i, e in enumerate(s.values):
            if e is None or e.value is None:
                runs.append([])
            else:
                runs[-1].append((i, e))
        runs = [run for run in runs if run]
        path = " ".join(_polyline([(x(i), y(e.value)) for i, e in run if e.value is not None])
                        for run in runs)  # fmt: skip
        band = " ".join(_band(run, x, y) for run in runs)
        end = None
        if runs and (last := runs[-1][-1])[1].value is not None:
            end = (round(x(last[0]), 2), y(last[1].value))
        lines.append(Line(s.name, s.slot, path, band, end, end[1] if end else 0.0))
    lines = _spread_labels(lines, top, bottom)
    every = max(1, math.ceil((len(days) - 1) / (DATE_TICKS - 1)))  # whole days apart
    picked = range(0, len(days), every)
    return TimeChart(
        CHART_WIDTH,
        CHART_HEIGHT,
        left,
        top,
        right,
        bottom,
        tuple(lines),
        tuple(Tick(round(x(i), 2), f"{days[i]:%b} {days[i].day}") for i in picked),
        tuple(Tick(y(v), scale.label(v, signed=signed)) for v in scale.ticks),
        y(0.0) if signed and scale.low <= 0 <= scale.high else None,
    )


def _spread_labels(lines: list[Line], top: float, bottom: float) -> list[Line]:
    """Move the end labels apart (downwards, then back up from the bottom) so that two
    lines ending close together keep readable names."""
    ends = sorted((line.label_y, n) for n, line in enumerate(lines) if line.end)
    placed: dict[int, float] = {}
    previous = top - LABEL_GAP
    for wanted, n in ends:
        previous = placed[n] = max(wanted, previous + LABEL_GAP)
    limit = bottom
    for _, n in reversed(ends):
        limit = placed[n] = min(placed[n], limit)
        limit -= LABEL_GAP
    return [replace(line, label_y=round(placed.get(n, line.label_y), 2))
            for n, line in enumerate(lines)]  # fmt: skip


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    if len(points) == 1:  # a lone day: a short stroke, so that it shows
        (px, py) = points[0]
        return f"M{px - LONE_DAY:.2f},{py} H{px + LONE_DAY:.2f}"
    return "M" + " L".join(f"{px:.2f},{py}" for px, py in points)


def _band(
    run: Sequence[tuple[int, Estimate]], x: Callable[[int], float], y: Callable[[float], float]
) -> str:
    edges = [(x(i), e.low, e.high) for i, e in run if e.low is not None and e.high is not None]
    if not edges:
        return ""
    if len(edges) == 1:
        px, low, high = edges[0]
        edges = [(px - LONE_DAY, low, high), (px + LONE_DAY, low, high)]
    upper = [f"{px:.2f},{y(high)}" for px, _, high in edges]
    lower = [f"{px:.2f},{y(low)}" for px, low, _ in reversed(edges)]
    return "M" + " L".join(upper + lower) + " Z"
