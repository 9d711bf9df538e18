"""Numbers in words, the same on the command line and the report pages: a rate as
"42.1%", a difference in points as "+57.9", a relative lift as "+138%", a p-value to
three significant digits, money to two decimals; "-" for a number that is undefined."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.reports.estimates import Estimate

MISSING = "-"


def rate(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:+.1f}"


def relative(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:+.0f}%"


def p_value(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3g}"


def amount(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def signed_amount(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.2f}"


def has_interval(estimate: Estimate | None) -> bool:
    return estimate is not None and estimate.low is not None and estimate.high is not None


def with_interval(
    estimate: Estimate | None, number: Callable[[float | None], str], unit: str = ""
) -> str:
    """The value, its unit, and its interval if it has one: "+57.9 points (+26.5 to +76.9)"."""
    if estimate is None or estimate.value is None:
        return MISSING
    shown = number(estimate.value) + unit
    if has_interval(estimate):
        shown += f" ({number(estimate.low)} to {number(estimate.high)})"
    return shown
