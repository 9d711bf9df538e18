"""`retention:` in `orchestrator.yaml`: a period per kind of data, and the floors below
which a period would take away what a feature reads.

    retention:
      events: 395d          # raw tracked events (the event store)
      message_bodies: 90d   # rendered message content; the message row stays
      decisions: 180d       # arbitration decisions and the requests they answered
      receipts: 90d         # channel systems' receipts as they sent them
      assignments: 395d     # randomised choices of experiments that have ended
      every: 1d             # how often the run goes (a Temporal schedule)

What each kind keeps past its period (running journeys, caps, open experiments) is the
sweep's business (`orchestrator.retention.kinds`); this module only checks that the
periods leave each feature the history it reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from croniter import croniter  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.segments.definitions import Definitions
from rules.durations import Duration, format_duration
from rules.policy import Policy

Kind = Literal["events", "message_bodies", "decisions", "receipts", "assignments"]
KINDS: tuple[Kind, ...] = ("events", "message_bodies", "decisions", "receipts", "assignments")
SHORTEST = timedelta(days=1)


class RetentionConfig(BaseModel):
    """How long each kind of data about users is kept (see README, "Retention")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: Duration = Field(
        default=timedelta(days=395),
        description="Tracked events (13 months: a year's seasons and the same month last "
        "year); unrouted events and the trigger events of running journeys stay longer",
    )
    message_bodies: Duration = Field(
        default=timedelta(days=90),
        description="Rendered content of messages (and in-app/web copies once expired); the "
        "message row, its status and receipt times stay for reports and caps",
    )
    decisions: Duration = Field(
        default=timedelta(days=180),
        description="Arbitration decisions with their checks, and the requests they answered; "
        "never shorter than the policy's longest cap window",
    )
    receipts: Duration = Field(
        default=timedelta(days=90),
        description="Receipt payloads as the channel systems sent them (their times are "
        "copied onto the message and their facts are events)",
    )
    assignments: Duration = Field(
        default=timedelta(days=395),
        description="Assignments of experiments that have ended (`orchestrator experiments "
        "end`); an open experiment's assignments are kept until it ends",
    )
    every: Duration = Field(default=timedelta(days=1), description="How often the run goes")
    cron: str | None = Field(
        default=None,
        description="Instead of `every`: a cron expression in UTC, e.g. `30 3 * * *`",
        examples=["30 3 * * *"],
    )
    batch: int = Field(
        default=5000, ge=100, le=50_000, description="Rows per transaction (no long locks)"
    )
    enabled: bool = Field(default=True, description="false pauses the schedule")

    @field_validator(*KINDS)
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < SHORTEST:
            raise ValueError(
                f"{days(value)} is shorter than a day: the run goes at most "
                "hourly and a journey step may take that long"
            )
        return value

    @field_validator("every")
    @classmethod
    def _not_too_often(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=1):
            raise ValueError("run at most hourly: each run scans the old rows of every kind")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> RetentionConfig:
        if self.cron is not None and "every" in self.model_fields_set:
            raise ValueError("give `every` or `cron`, not both")
        return self

    def period(self, kind: Kind) -> timedelta:
        period: timedelta = getattr(self, kind)
        return period


@dataclass(frozen=True, slots=True)
class Need:
    """A feature that reads `kind` back over `period`."""

    kind: Kind
    period: timedelta
    why: str


def days(value: timedelta) -> str:
    """A period as people write retention periods: `395d`, not `56w3d`."""
    if value >= timedelta(days=1) and value % timedelta(days=1) == timedelta(0):
        return f"{value.days}d"
    return format_duration(value)


def shortfalls(config: RetentionConfig, needs: Iterable[Need]) -> dict[Kind, str]:
    """For each kind kept less long than a feature reads it back, why that is refused
    (the longest need first named)."""
    found: dict[Kind, str] = {}
    for need in sorted(needs, key=lambda n: n.period, reverse=True):
        if need.kind not in found and config.period(need.kind) < need.period:
            found[need.kind] = (
                f"{days(config.period(need.kind))} is shorter than {days(need.period)}, "
                f"which {need.why}: keep {need.kind} at least {days(need.period)}"
            )
    return found


def needs(*, policy: Policy, definitions: Definitions, popularity_window: timedelta) -> list[Need]:
    """What the workspace's features read back, from its policy, its computed traits and
    its ranking settings. Journeys set no floor: a running journey carries the events it
    heard in its own state and converts on the goal event as it arrives."""
    found = [
        Need("events", popularity_window, "ranking.popularity_window reads purchases back over"),
    ]
    if policy.longest_window:
        found.append(
            Need(
                "decisions",
                policy.longest_window,
                "the policy's longest cap (or dedupe) window counts sends over",
            )
        )
    conflict = max(policy.conflicts.windows.values(), default=timedelta(0))
    if conflict:
        found.append(
            Need(
                "decisions",
                conflict + policy.max_defer,
                "a deferred request's conflict window (plus max_defer) spans",
            )
        )
    for key, trait in definitions.traits.items():
        window = trait.over.window if trait.over is not None else None
        if trait.sequence is not None:
            window = trait.sequence.within
        if window is not None:
            found.append(
                Need(
                    "events",
                    window,
                    f"trait {key!r} (traits.yaml) recomputes from stored events over",
                )
            )
    return found
