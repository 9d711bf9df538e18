"""What reports read from Postgres: users per arm with their outcomes, step funnels, the
messages of a journey with their receipts and the conversions they preceded.

The unit of analysis is the user: each assigned user counts once, in the arm of their
first assignment. What became of them is measured the same way in every arm:

    holdout, experiment, template   the assigning enrollment's goal, within its window
                                    from entry (a held-out user re-entering, or a treated
                                    one kept in the journey longer, gets no more chances)
    global control                  every goal of every journey the user entered from
                                    the assigning enrollment on; revenue counts each
                                    converting event once, however many journeys it
                                    converted
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
        e.converted_at IS NOT NULL AS converted, e.converted_at,
        coalesce(e.conversion_value, 0) AS revenue
    FROM assignments AS a LEFT JOIN enrollments AS e ON e.id = a.enrollment_id
    WHERE a.journey_key = :journey AND a.kind = :kind AND a.experiment_key = :key
    ORDER BY a.assigned_at, a.id
    """
)
_ASSIGNED_ANYWHERE = text(
    """
    SELECT a.user_id, a.arm, a.propensity, a.mode, a.assigned_at,
        o.converted_at IS NOT NULL AS converted, o.converted_at,
        coalesce(o.revenue, 0) AS revenue
    FROM assignments AS a
    LEFT JOIN LATERAL (
        SELECT min(c.converted_at) AS converted_at, sum(c.conversion_value) AS revenue
        FROM (
            SELECT DISTINCT ON (coalesce(e.conversion_event_id, -e.id))
                e.converted_at, e.conversion_value
            FROM enrollments AS e
            WHERE e.user_id = a.user_id AND e.converted_at IS NOT NULL
                AND e.id >= a.enrollment_id
            ORDER BY coalesce(e.conversion_event_id, -e.id)
        ) AS c
    ) AS o ON true
    WHERE a.journey_key = :journey AND a.kind = :kind AND a.experiment_key = :key
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
    SELECT status, count(*) AS enrollments
    FROM enrollments WHERE journey_key = :journey GROUP BY status
    """
)
_USERS = text(
    """
    SELECT count(DISTINCT user_id) AS users,
        count(DISTINCT user_id) FILTER (WHERE converted_at IS NOT NULL) AS converted
    FROM enrollments WHERE journey_key = :journey
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
    query = _ASSIGNED_ANYWHERE if kind == "global_control" else _ASSIGNED
    return [Assigned(**row._mapping) for row in await conn.execute(query, params)]


async def assignment_keys(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    """The (kind, key) of every randomised choice logged for a journey, with users."""
    return [dict(r._mapping) for r in await conn.execute(_KEYS, {"journey": journey})]


async def funnel(conn: AsyncConnection, *, journey: str) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(_FUNNEL, {"journey": journey})]


async def enrollment_counts(conn: AsyncConnection, *, journey: str) -> dict[str, int]:
    """Enrollments by status."""
    rows = await conn.execute(_ENROLLMENTS, {"journey": journey})
    return {r.status: int(r.enrollments) for r in rows}


async def user_counts(conn: AsyncConnection, *, journey: str) -> tuple[int, int]:
    """Users who entered the journey, and those of them who reached its goal."""
    row = (await conn.execute(_USERS, {"journey": journey})).one()
    return int(row.users), int(row.converted)


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
