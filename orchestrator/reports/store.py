"""What reports read from Postgres: users per arm with their outcomes, step funnels, the
messages of a journey with their receipts and the conversions they preceded.

The unit of analysis is the user: each assigned user counts once, in the arm of their
first assignment, and is converted if any enrollment of theirs in the journey (for the
global control group, in any journey) from the assigning one on reached its goal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import alerts

_ASSIGNED = text(
    """
    SELECT a.user_id, a.arm, a.propensity, a.mode, a.assigned_at,
        coalesce(bool_or(e.converted_at IS NOT NULL), false) AS converted,
        min(e.converted_at) AS converted_at,
        coalesce(sum(e.conversion_value) FILTER (WHERE e.converted_at IS NOT NULL), 0)
            AS revenue
    FROM assignments AS a
    LEFT JOIN enrollments AS e ON e.user_id = a.user_id
        AND (a.journey_key = '*' OR e.journey_key = a.journey_key)
        AND e.id >= coalesce(a.enrollment_id, 0)
    WHERE a.journey_key = :journey AND a.kind = :kind AND a.experiment_key = :key
    GROUP BY a.id
    ORDER BY a.assigned_at, a.id
    """
)
_KEYS = text(
    """
    SELECT kind, experiment_key, count(*) AS users FROM assignments
    WHERE journey_key = :journey GROUP BY kind, experiment_key ORDER BY kind, experiment_key
    """
)
_FUNNEL = text(
    """
    SELECT s.step, s.kind, count(*) AS visits, count(DISTINCT e.user_id) AS users
    FROM enrollment_steps AS s JOIN enrollments AS e ON e.id = s.enrollment_id
    WHERE e.journey_key = :journey
    GROUP BY s.step, s.kind
    """
)
_ENROLLMENTS = text(
    """
    SELECT status, count(*) AS enrollments, count(DISTINCT user_id) AS users,
        count(converted_at) AS converted
    FROM enrollments WHERE journey_key = :journey GROUP BY status
    """
)
_MESSAGES = text(
    """
    SELECT m.enrollment_id, m.channel, m.step, m.template, m.status, m.sent_at,
        m.delivered_at, m.opened_at, m.clicked_at, e.converted_at, e.conversion_value
    FROM messages AS m JOIN enrollments AS e ON e.id = m.enrollment_id
    WHERE m.journey_key = :journey
    ORDER BY m.enrollment_id, m.sent_at NULLS LAST, m.created_at
    """
)


@dataclass(frozen=True, slots=True)
class Assigned:
    """One assigned user and what became of them."""

    user_id: str
    arm: str
    propensity: float | None
    mode: str
    assigned_at: datetime
    converted: bool
    converted_at: datetime | None
    revenue: float


async def assigned(conn: AsyncConnection, *, journey: str, kind: str, key: str) -> list[Assigned]:
    """Every user assigned in this experiment (holdout, global control), first first."""
    params = {"journey": journey, "kind": kind, "key": key}
    return [Assigned(**row._mapping) for row in await conn.execute(_ASSIGNED, params)]


async def assignment_keys(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    """The (kind, key) of every randomised choice logged for a journey, with users."""
    return [dict(r._mapping) for r in await conn.execute(_KEYS, {"journey": journey})]


async def funnel(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(_FUNNEL, {"journey": journey})]


async def enrollment_counts(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(_ENROLLMENTS, {"journey": journey})]


async def journey_messages(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    """Every message of the journey with its receipts' times and its enrollment's goal."""
    return [dict(r._mapping) for r in await conn.execute(_MESSAGES, {"journey": journey})]


@dataclass(frozen=True, slots=True)
class AlertLine:
    """An open alert, as reports show it."""

    kind: str
    subject: str
    summary: str
    opened_at: datetime


async def open_alerts(conn: AsyncConnection, *, subject: str | None = None) -> list[AlertLine]:
    """Open alerts (about a journey, its experiments included, when `subject` is one)."""
    query = select(alerts).where(alerts.c.resolved_at.is_(None)).order_by(alerts.c.opened_at)
    if subject is not None:
        query = query.where(
            (alerts.c.subject == subject) | alerts.c.subject.startswith(f"{subject}/")
        )
    return [
        AlertLine(r.kind, r.subject, str(r.details.get("summary", r.kind)), r.opened_at)
        for r in await conn.execute(query)
    ]
