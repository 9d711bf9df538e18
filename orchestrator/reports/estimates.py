"""What the report statistics share: an arm's totals in, an estimate out.

`ArmTotals` holds the per-arm sums SQL aggregates (users, conversions, revenue and its
sum of squares); `Estimate` is a point with its two-sided interval. A number that is
undefined (no users, a division by zero, no variation) is None, never NaN, so results
built from these (`dataclasses.asdict`) are JSON-ready. `statistics`, `power` and
`bandits` import from here; this module imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import special  # type: ignore[import-untyped]

Metric = Literal["conversion", "revenue"]
CONFIDENCE = 0.95


def finite(value: float | None) -> float | None:
    """The value as a float, or None unless it is a finite number."""
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its interval; each part None where it is undefined."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(
        cls, value: float | None, low: float | None = None, high: float | None = None
    ) -> Estimate:
        value = finite(value)
        if value is None:
            return cls(None)
        low, high = finite(low), finite(high)
        if low is None or high is None:
            return cls(value)
        return cls(value, low, high)


@dataclass(frozen=True, slots=True)
class ArmTotals:
    """What a report aggregates per arm: users, converted users, Σ revenue, Σ revenue²."""

    arm: str
    users: int
    conversions: int = 0
    revenue: float = 0.0
    revenue_squares: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 0 or not 0 <= self.conversions <= self.users:
            raise ValueError(f"arm {self.arm!r}: need 0 <= conversions <= users")
        if self.revenue_squares < 0 or not math.isfinite(self.revenue + self.revenue_squares):
            raise ValueError(f"arm {self.arm!r}: revenue sums must be finite, squares >= 0")

    def sums(self, metric: Metric) -> tuple[int, float, float]:
        """(n, Σy, Σy²) of the per-user outcome: converted (0/1) or revenue."""
        if metric == "conversion":
            return self.users, float(self.conversions), float(self.conversions)
        return self.users, self.revenue, self.revenue_squares


def moments(arm: ArmTotals, metric: Metric) -> tuple[int, float | None, float | None]:
    """Users, mean and sample variance (n - 1) of the per-user outcome."""
    n, total, squares = arm.sums(metric)
    if n == 0:
        return 0, None, None
    mean = total / n
    if n < 2:
        return n, mean, None
    return n, mean, max(0.0, (squares - total * mean) / (n - 1))


def critical_z(confidence: float) -> float:
    """z(1 - alpha/2) for alpha = 1 - confidence: the two-sided interval's multiplier."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    return float(special.ndtri(0.5 + confidence / 2))
