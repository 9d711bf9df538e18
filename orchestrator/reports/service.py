"""Reports: what journeys, their experiments and the workspace did, with the statistics.

The CLI, the JSON API and the report pages all call these functions, so they show
the same numbers. Everything here reads through `store` (SQL) and computes through
`statistics`, `bandits` and `power` (pure).

    experiment   an experiment step, a send's template variants, a journey's holdout,
                 or the workspace's global control group: arms with intervals, lift
                 against the control with fixed-horizon and always-valid tests, the
                 sample-ratio check (first, as every other number depends on it),
                 power; bandits by inverse-propensity weighting instead of shares
    journey      enrollments, the step funnel in journey order, its experiments, and
                 conversions attributed to channels (first and last touch)
    workspace    the global control group's result, as incremental conversions and
                 revenue of all journeys together, and every journey's headline
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.access import audit
from orchestrator.reports import store
from orchestrator.reports.bandits import BanditArmEstimate, bandit_estimates
from orchestrator.reports.design import (
    Kind,
    UnknownReport,
    configured,
    design,
    journey_order,
    journey_spec,
    kind_of,
    randomises,
)
from orchestrator.reports.estimates import ArmTotals, Estimate
from orchestrator.reports.statistics import (
    ExperimentReport,
    SequentialTest,
    analyse,
    pair_planning_users,
    sequential_test,
    wilson_interval,
)
from orchestrator.tables import (
    experiment_archives,
    journeys,
)
from workflows.spec import step_kind

# The confidence sequences are tuned for experiments of about this many users (any
# size stays valid; this is where their intervals are narrowest).
PLANNING_USERS = 10_000
# Days of history a timeline shows at most.
TIMELINE_DAYS = 180


@dataclass(frozen=True, slots=True)
class ArmDay:
    arm: str
    users: int
    conversions: int
    conversion_rate: Estimate


@dataclass(frozen=True, slots=True)
class DayPoint:
    """Where each arm stood at the end of a day, and the always-valid interval of the
    first arm against the control then (it may be read every day)."""

    day: date
    arms: tuple[ArmDay, ...]
    difference: Estimate | None


@dataclass(frozen=True, slots=True)
class ExperimentResult:
    journey: str
    key: str
    kind: Kind
    mode: Literal["fixed", "bandit"]
    control: str
    shares: dict[str, float] | None  # as configured; None for a bandit
    users: int
    analysis: ExperimentReport | None  # fixed splits, holdouts, global control
    bandit: tuple[BanditArmEstimate, ...] | None  # bandits, by inverse propensity
    users_without_propensity: int  # logged before propensities were: left out of `bandit`
    timeline: tuple[DayPoint, ...]
    ended_at: datetime | None = None  # an ended experiment's results, as archived then
    # Assigned under an earlier split (their arm's logged chance is not its share now):
    # left out, as pooling users of two splits would compare unlike groups.
    users_earlier_split: int = 0


@dataclass(frozen=True, slots=True)
class StepFunnel:
    step: str
    kind: str
    users: int
    visits: int


@dataclass(frozen=True, slots=True)
class ChannelAttribution:
    """Messages of one channel, how far they got, and the conversions they preceded."""

    channel: str
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int  # messages whose enrollment reached its goal after they were sent
    first_touch: int  # converted enrollments whose first message was on this channel
    last_touch: int  # ... whose last message before converting was on this channel
    last_touch_revenue: float


@dataclass(frozen=True, slots=True)
class JourneyReport:
    key: str
    name: str
    version: int
    users: int
    enrollments: dict[str, int]  # by status
    converted: int  # users who reached the goal, held-out ones included
    funnel: tuple[StepFunnel, ...]
    holdout: ExperimentResult | None
    experiments: tuple[ExperimentResult, ...]
    attribution: tuple[ChannelAttribution, ...]
    alerts: tuple[store.AlertLine, ...]


@dataclass(frozen=True, slots=True)
class JourneyLine:
    key: str
    name: str
    users: int
    converted: int


@dataclass(frozen=True, slots=True)
class WorkspaceReport:
    global_control: ExperimentResult | None
    incremental_conversions: Estimate | None  # (treated rate - control rate) x treated
    incremental_revenue: Estimate | None
    journeys: tuple[JourneyLine, ...]
    alerts: tuple[store.AlertLine, ...]


_RESULT = TypeAdapter(ExperimentResult)


async def experiment(
    conn: AsyncConnection,
    *,
    journey: str,
    key: str,
    kind: Kind | None = None,
    global_control: float = 0,
    now: datetime,
    timeline: bool = True,
) -> ExperimentResult:
    """One experiment's result. `kind` may be left out when the key names one thing."""
    if (ended := await archived(conn, journey=journey, key=key)) is not None:
        return ended
    spec = await journey_spec(conn, journey) if journey != "*" else None
    if kind is None:
        kind = await kind_of(conn, spec, journey, key)
    rows = await store.assigned(conn, journey=journey, kind=kind, key=key)
    arms, shares, control = design(spec, kind, key, [r.arm for r in rows], global_control)
    bandit = any(r.mode == "bandit" for r in rows)
    earlier = 0
    if shares and not bandit:
        current = [r for r in rows if _under(shares, r)]
        earlier, rows = len(rows) - len(current), current
    totals = _totals(arms, rows)
    analysis = None
    if not bandit and sum(t.users for t in totals) > 0:
        analysis = analyse(totals, control=control, planning_users=PLANNING_USERS,
                           shares=[shares[a] for a in arms] if shares else None)  # fmt: skip
    estimates, untracked = None, 0
    if bandit:
        # Rows logged before propensities were (or as zero, by an older version) cannot
        # be weighted: left out and counted.
        logged = [(r, r.propensity) for r in rows if r.propensity is not None and r.propensity > 0]
        untracked = len(rows) - len(logged)
        estimates = bandit_estimates(
            arms=arms,
            chosen=[r.arm for r, _ in logged],
            propensity=[p for _, p in logged],
            outcome=[1.0 if r.converted else 0.0 for r, _ in logged],
        )
    return ExperimentResult(
        journey=journey,
        key=key,
        kind=kind,
        mode="bandit" if bandit else "fixed",
        control=control,
        shares=None if bandit else shares,
        users=len(rows),
        analysis=analysis,
        bandit=estimates,
        users_without_propensity=untracked,
        timeline=_timeline(arms, control, rows, shares, now) if timeline else (),
        users_earlier_split=earlier,
    )


async def end_experiment(
    conn: AsyncConnection, *, journey: str, key: str, actor: audit.Actor, now: datetime
) -> ExperimentResult:
    """Archive an experiment's configuration and results as they are now, unchanged from
    then on (its report answers the archive); UnknownReport if unknown or ended."""
    if await archived(conn, journey=journey, key=key) is not None:
        raise UnknownReport(f"experiment {key!r} of journey {journey!r} has ended already")
    result = await experiment(conn, journey=journey, key=key, now=now)
    spec = await journey_spec(conn, journey)
    steps = {step_id: step.model_dump(mode="json") for step_id, step in spec.steps.items()
             if randomises(step, key)}  # fmt: skip
    ended = dataclasses.replace(result, ended_at=now)
    await conn.execute(
        insert(experiment_archives).values(
            journey_key=journey, experiment_key=key, kind=result.kind, ended_at=now,
            ended_by=f"{actor.kind}:{actor.name}",
            configuration={"steps": steps, "holdout": spec.holdout, "shares": result.shares},
            results=_RESULT.dump_python(ended, mode="json"),
        )
    )  # fmt: skip
    await audit.record(conn, actor, "experiments.end", details={"journey": journey, "key": key},
                       now=now)  # fmt: skip
    return ended


async def archived(conn: AsyncConnection, *, journey: str, key: str) -> ExperimentResult | None:
    stored = await conn.scalar(
        select(experiment_archives.c.results).where(
            experiment_archives.c.journey_key == journey,
            experiment_archives.c.experiment_key == key,
        )
    )
    return None if stored is None else _RESULT.validate_python(stored)


async def journey_report(
    conn: AsyncConnection, *, journey: str, global_control: float = 0, now: datetime
) -> JourneyReport:
    spec = await journey_spec(conn, journey)
    row = (
        await conn.execute(
            select(journeys.c.name, journeys.c.current_version).where(journeys.c.key == journey)
        )
    ).one()
    counts = await store.enrollment_counts(conn, journey=journey)
    steps = {r["step"]: r for r in await store.funnel(conn, journey=journey)}
    funnel = tuple(
        StepFunnel(step, step_kind(spec.steps[step]) or "?", steps[step]["users"],
                   steps[step]["visits"])
        for step in journey_order(spec)
        if step in steps
    )  # fmt: skip
    keys = await store.assignment_keys(conn, journey=journey)
    holdout = None
    if spec.holdout or any(k["kind"] == "holdout" for k in keys):
        holdout = await experiment(conn, journey=journey, key="holdout", kind="holdout", now=now)
    found = {(k["kind"], k["experiment_key"]) for k in keys if k["kind"] != "holdout"}
    planned = set(configured(spec))
    results = [
        await experiment(conn, journey=journey, key=key, kind=kind, now=now)
        for kind, key in sorted(planned | found)
    ]
    users, converted = await store.user_counts(conn, journey=journey)
    return JourneyReport(
        key=journey,
        name=row.name,
        version=row.current_version,
        users=users,
        enrollments=counts,
        converted=converted,
        funnel=funnel,
        holdout=holdout,
        experiments=tuple(results),
        attribution=_attribution(await store.journey_messages(conn, journey=journey)),
        alerts=tuple(await store.open_alerts(conn, subject=journey)),
    )


async def workspace_report(
    conn: AsyncConnection, *, global_control: float, now: datetime
) -> WorkspaceReport:
    control = None
    conversions = revenue = None
    keys = await store.assignment_keys(conn, journey="*")
    if global_control or keys:
        control = await experiment(conn, journey="*", key="global_control",
                                   kind="global_control", global_control=global_control,
                                   now=now)  # fmt: skip
        conversions, revenue = _incremental(control)
    lines = []
    for row in await conn.execute(select(journeys.c.key, journeys.c.name).order_by(journeys.c.key)):
        lines.append(JourneyLine(row.key, row.name,
                                 *await store.user_counts(conn, journey=row.key)))  # fmt: skip
    return WorkspaceReport(
        control, conversions, revenue, tuple(lines), tuple(await store.open_alerts(conn))
    )


def _under(shares: dict[str, float], row: store.Assigned) -> bool:
    """Whether the user was assigned under this split: their arm's logged chance is its
    share (rows logged before chances were are taken as they are)."""
    return row.propensity is None or math.isclose(row.propensity, shares.get(row.arm, -1))


def _totals(arms: Sequence[str], rows: Sequence[store.Assigned]) -> list[ArmTotals]:
    users: dict[str, int] = defaultdict(int)
    converted: dict[str, int] = defaultdict(int)
    revenue: dict[str, float] = defaultdict(float)
    squares: dict[str, float] = defaultdict(float)
    for r in rows:
        users[r.arm] += 1
        converted[r.arm] += r.converted
        revenue[r.arm] += r.revenue
        squares[r.arm] += r.revenue * r.revenue
    return [ArmTotals(a, users[a], converted[a], revenue[a], squares[a]) for a in arms]


# ---- timeline, attribution, increments -------------------------------------------------


def _timeline(
    arms: Sequence[str],
    control: str,
    rows: Sequence[store.Assigned],
    shares: dict[str, float] | None,
    now: datetime,
) -> tuple[DayPoint, ...]:
    """Each day's cumulative totals per arm, and the always-valid difference of the first
    other arm against the control (tuned as `analyse` tunes it, so the last day's is the
    lift table's). A conversion before its user's assignment counts from the assignment."""
    if not rows:
        return ()
    today = now.astimezone(UTC).date()
    first = max(min(r.assigned_at for r in rows).astimezone(UTC).date(),
                today - timedelta(days=TIMELINE_DAYS - 1))  # fmt: skip
    treatment = next((a for a in arms if a != control), None)
    # Per arm, when users arrived and when they converted, sorted: a day is two bisects.
    arrived = {a: sorted(r.assigned_at for r in rows if r.arm == a) for a in arms}
    converted = {a: sorted(max(r.converted_at, r.assigned_at) for r in rows
                           if r.arm == a and r.converted_at)
                 for a in arms}  # fmt: skip
    planning = PLANNING_USERS
    if treatment is not None:
        weights = [shares[a] for a in arms] if shares else [1.0] * len(arms)
        planning = pair_planning_users(PLANNING_USERS, weights, arms.index(treatment),
                                       arms.index(control))  # fmt: skip
    points = []
    for offset in range((today - first).days + 1):
        day = first + timedelta(days=offset)
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        totals = {
            a: ArmTotals(a, bisect_left(arrived[a], end), bisect_left(converted[a], end))
            for a in arms
        }
        shown = tuple(
            ArmDay(a, t.users, t.conversions, wilson_interval(t.conversions, t.users))
            for a, t in totals.items()
        )
        difference = None
        if treatment is not None and totals[control].users and totals[treatment].users:
            test: SequentialTest = sequential_test(
                totals[treatment], totals[control], metric="conversion",
                planning_users=planning,
            )  # fmt: skip
            difference = test.difference
        points.append(DayPoint(day, shown, difference))
    return tuple(points)


def _attribution(messages: Sequence[dict[str, Any]]) -> tuple[ChannelAttribution, ...]:
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_enrollment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        c = counts[m["channel"]]
        if m["sent_at"] is None:
            continue
        c["sent"] += 1
        for stage in ("delivered", "opened", "clicked"):
            c[stage] += m[f"{stage}_at"] is not None
        converted_at = m["converted_at"]
        if converted_at is not None and m["sent_at"] <= converted_at:
            c["converted"] += 1
            by_enrollment[m["enrollment_id"]].append(m)
    for touched in by_enrollment.values():
        touched.sort(key=lambda m: m["sent_at"])
        counts[touched[0]["channel"]]["first_touch"] += 1
        last = touched[-1]
        counts[last["channel"]]["last_touch"] += 1
        counts[last["channel"]]["last_touch_revenue"] += last["conversion_value"] or 0.0
    return tuple(
        ChannelAttribution(
            channel,
            int(c["sent"]),
            int(c["delivered"]),
            int(c["opened"]),
            int(c["clicked"]),
            int(c["converted"]),
            int(c["first_touch"]),
            int(c["last_touch"]),
            round(c["last_touch_revenue"], 2),
        )
        for channel, c in sorted(counts.items())
        if c["sent"]
    )


def _incremental(result: ExperimentResult) -> tuple[Estimate | None, Estimate | None]:
    """What treatment added over the control group, in conversions and revenue."""
    if result.analysis is None or not result.analysis.comparisons:
        return None, None
    [comparison] = result.analysis.comparisons
    treated = next(a.users for a in result.analysis.arms if a.arm == comparison.arm)

    def scaled(estimate: Estimate) -> Estimate:
        return Estimate.of(*(None if v is None else v * treated
                             for v in (estimate.value, estimate.low, estimate.high)))  # fmt: skip

    return scaled(comparison.conversion.absolute), scaled(comparison.revenue.absolute)
