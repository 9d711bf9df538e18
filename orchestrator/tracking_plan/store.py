"""The plan's deployed versions and the violations counted under `mode: report`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import BigInteger, Text, func, select, type_coerce
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import tracking_plan_violations, tracking_plans
from orchestrator.tracking_plan.enforcement import Violation
from orchestrator.tracking_plan.plan import TrackingPlan
from rules.durations import parse_duration

Change = Literal["new", "updated", "unchanged", "retired"]


@dataclass(frozen=True)
class DeployedPlan:
    """The plan in force and its version (0: never deployed; `plan` None: none in force)."""

    version: int = 0
    plan: TrackingPlan | None = None
    deployed_at: datetime | None = None


async def deployed_plan(conn: AsyncConnection) -> DeployedPlan:
    """The newest deployed version."""
    t = tracking_plans.c
    row = (
        await conn.execute(
            select(t.version, t.plan, t.source, t.deployed_at).order_by(t.version.desc()).limit(1)
        )
    ).one_or_none()
    if row is None:
        return DeployedPlan()
    plan = None if row.plan is None else TrackingPlan.from_json(row.plan, row.source)
    return DeployedPlan(row.version, plan, row.deployed_at)


async def newest_version(conn: AsyncConnection) -> int | None:
    found: int | None = await conn.scalar(select(func.max(tracking_plans.c.version)))
    return found


async def deploy_plan(
    conn: AsyncConnection, plan: TrackingPlan | None
) -> tuple[int, Change] | None:
    """A new version when the plan changed (or was removed); None when there never was one.
    Call inside the deploy's transaction (its advisory lock orders concurrent deploys)."""
    t = tracking_plans.c
    newest = (
        await conn.execute(select(t.version, t.content_hash).order_by(t.version.desc()).limit(1))
    ).one_or_none()
    digest = plan.digest() if plan is not None else "none"
    if newest is None and plan is None:
        return None
    if newest is not None and newest.content_hash == digest:
        return newest.version, "unchanged"
    version = 1 if newest is None else newest.version + 1
    await conn.execute(
        insert(tracking_plans).values(
            version=version,
            plan=plan.as_json() if plan is not None else None,
            source=plan.source if plan is not None else "",
            content_hash=digest,
        )
    )
    change: Change = "new" if newest is None else "updated" if plan is not None else "retired"
    return version, change


async def record_violations(
    conn: AsyncConnection,
    violations: Iterable[Violation],
    *,
    stored: set[str],
    plan_version: int,
    now: datetime,
) -> None:
    """Count the violations of messages that were stored now (`stored`: their message
    ids as the source sent them; a retried message is counted once). One upsert per
    distinct (event, field, problem) of the batch, in key order so that concurrent
    batches never deadlock."""
    counted: dict[tuple[str, str, str, str], list[Any]] = {}
    seen: set[tuple[str, str, str, str, str]] = set()
    for v in violations:
        key = (v.type, v.event, v.counted_field, v.problem)
        if v.message_id not in stored or (v.message_id, *key) in seen:
            continue
        seen.add((v.message_id, *key))
        if key in counted:
            counted[key][0] += 1
            counted[key][1:] = [v.message_id, v.detail]
        else:
            counted[key] = [1, v.message_id, v.detail]
    if not counted:
        return
    day = now.date()
    rows = [
        {"plan_version": plan_version, "day": day, "type": kind, "event": event,
         "field": field, "problem": problem, "count": n, "first_seen": now, "last_seen": now,
         "example_message_id": example, "example_detail": detail}
        for (kind, event, field, problem), (n, example, detail) in sorted(counted.items())
    ]  # fmt: skip
    stmt = insert(tracking_plan_violations).values(rows)
    c = tracking_plan_violations.c
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[c.plan_version, c.day, c.type, c.event, c.field, c.problem],
            set_={
                "count": c.count + stmt.excluded.count,
                "last_seen": func.greatest(c.last_seen, stmt.excluded.last_seen),
                "example_message_id": stmt.excluded.example_message_id,
                "example_detail": stmt.excluded.example_detail,
            },
        )
    )


async def list_violations(
    conn: AsyncConnection, *, since: date | None = None, plan_version: int | None = None
) -> list[dict[str, Any]]:
    """Violations per (event, field, problem), most frequent first, summed over days from
    `since` (default: all) under one plan version (default: the one in force)."""
    c = tracking_plan_violations.c
    if plan_version is None:
        plan_version = await newest_version(conn) or 0
    query = (
        select(
            c.type, c.event, c.field, c.problem,
            func.sum(c.count).cast(BigInteger).label("count"),
            func.min(c.first_seen).label("first_seen"),
            func.max(c.last_seen).label("last_seen"),
            # The example of the latest day that saw it.
            _latest(c.example_message_id).label("example_message_id"),
            _latest(c.example_detail).label("example_detail"),
        )
        .where(c.plan_version == plan_version)
        .group_by(c.type, c.event, c.field, c.problem)
    )  # fmt: skip
    if since is not None:
        query = query.where(c.day >= since)
    rows = await conn.execute(query)
    found = [{"plan_version": plan_version, **row._mapping} for row in rows]
    found.sort(key=lambda r: (-r["count"], r["event"], r["field"], r["problem"]))
    return found


def since_day(since: str | None, now: datetime) -> date | None:
    """The first UTC day a `--since 7d` window counts (counters are per day); raises
    DurationError for a duration it cannot read."""
    if since is None:
        return None
    return (now - parse_duration(since)).date()


def _latest(column: Any) -> Any:
    ordered = func.array_agg(aggregate_order_by(column, tracking_plan_violations.c.day.desc()))
    return type_coerce(ordered, ARRAY(Text))[1]
