"""Reading segments and computed profiles: sizes, membership over time, a user's
computed traits, and a preview of definitions not deployed yet. The CLI and the API
both answer from here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.segments.definitions import Definitions, deployed
from orchestrator.segments.keeper import evaluate_user
from orchestrator.tables import (
    computed_profiles,
    events,
    profiles,
    segment_memberships,
)


class UnknownSegment(LookupError):
    """No segment of that key is deployed; the message lists those that are."""


def member_at(at: datetime) -> Any:
    """Membership rows of users who were in their segment at `at`."""
    m = segment_memberships.c
    return and_(m.entered_at <= at, or_(m.exited_at.is_(None), m.exited_at > at))


async def summaries(conn: AsyncConnection, now: datetime) -> list[dict[str, Any]]:
    """Every deployed segment: its condition, members now, entries and exits in 24 hours."""
    in_force = await deployed(conn)
    m = segment_memberships.c
    day = now - timedelta(days=1)
    counts = {
        row.segment_key: row
        for row in await conn.execute(
            select(
                m.segment_key,
                func.count().filter(m.exited_at.is_(None)).label("members"),
                func.count().filter(m.entered_at > day).label("entered_24h"),
                func.count().filter(m.exited_at > day).label("exited_24h"),
            ).group_by(m.segment_key)
        )
    }
    return [
        {
            "key": key,
            "description": segment.description,
            "when": segment.when,
            "members": counts[key].members if key in counts else 0,
            "entered_24h": counts[key].entered_24h if key in counts else 0,
            "exited_24h": counts[key].exited_24h if key in counts else 0,
        }
        for key, segment in in_force.definitions.segments.items()
    ]


async def detail(conn: AsyncConnection, key: str, now: datetime, *, days: int = 30
                 ) -> dict[str, Any]:  # fmt: skip
    """One segment with its size at the end of each of the last `days` days, and the
    entries and exits of each day."""
    found = next((s for s in await summaries(conn, now) if s["key"] == key), None)
    if found is None:
        known = ", ".join(s["key"] for s in await summaries(conn, now)) or "none deployed"
        raise UnknownSegment(f"no segment {key!r} (known: {known})")
    m = segment_memberships.c
    history = []
    for back in range(days - 1, -1, -1):
        end = now - timedelta(days=back)
        start = end - timedelta(days=1)
        row = (
            await conn.execute(
                select(
                    func.count().filter(member_at(end)).label("members"),
                    func.count().filter(m.entered_at > start, m.entered_at <= end).label("entered"),
                    func.count().filter(m.exited_at > start, m.exited_at <= end).label("exited"),
                ).where(m.segment_key == key, or_(m.exited_at.is_(None), m.exited_at > start))
            )
        ).one()
        history.append({"at": end, "members": row.members, "entered": row.entered,
                        "exited": row.exited})  # fmt: skip
    return {**found, "history": history}


async def members(
    conn: AsyncConnection, key: str, *, at: datetime, after: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    """Who was in the segment at `at`, in user order (page with `after`)."""
    m = segment_memberships.c
    rows = await conn.execute(
        select(m.user_id, m.entered_at, m.exited_at)
        .where(m.segment_key == key, member_at(at), m.user_id > after)
        .order_by(m.user_id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def profile(conn: AsyncConnection, user_id: str) -> dict[str, Any] | None:
    """A user's traits, each computed trait with when it was computed and last changed,
    and the segments they are in since when; None for a user we know nothing of."""
    sent = await conn.scalar(select(profiles.c.traits).where(profiles.c.user_id == user_id))
    row = (
        await conn.execute(
            select(
                computed_profiles.c["values"],
                computed_profiles.c.changed_at,
                computed_profiles.c.computed_at,
            ).where(computed_profiles.c.user_id == user_id)
        )
    ).one_or_none()
    if sent is None and row is None:
        return None
    m = segment_memberships.c
    stays = await conn.execute(
        select(m.segment_key, m.entered_at)
        .where(m.user_id == user_id, m.exited_at.is_(None))
        .order_by(m.segment_key)
    )
    computed = {}
    if row is not None:
        computed = {
            name: {"value": value, "computed_at": row.computed_at,
                   "changed_at": row.changed_at.get(name)}
            for name, value in sorted(row.values.items())
        }  # fmt: skip
    return {
        "user_id": user_id,
        "traits": {**(sent or {}), **(row.values if row is not None else {})},
        "computed": computed,
        "segments": [{"key": s.segment_key, "entered_at": s.entered_at} for s in stays],
    }


@dataclass(frozen=True)
class Preview:
    key: str
    matching: int  # users who would be in it now
    members: int  # users in the deployed segment of that key now (0 when new)
    entering: int
    leaving: int


async def preview(
    conn: AsyncConnection, definitions: Definitions, now: datetime
) -> tuple[int, list[Preview]]:
    """How many users each segment of `definitions` (say, a workspace not deployed yet)
    would hold now, next to the deployed segments: every known user is evaluated under
    the new definitions, rebuilding changed traits from stored events. Writes nothing."""
    everyone = union(
        select(profiles.c.user_id.label("user_id")),
        select(computed_profiles.c.user_id),
        select(events.c.user_id).where(events.c.user_id.is_not(None)),
    ).subquery("everyone")
    rows = await conn.execute(
        select(
            everyone.c.user_id,
            profiles.c.traits,
            computed_profiles.c.state,
            computed_profiles.c["values"],
            computed_profiles.c.segments,
        )
        .select_from(
            everyone.outerjoin(profiles, profiles.c.user_id == everyone.c.user_id).outerjoin(
                computed_profiles, computed_profiles.c.user_id == everyone.c.user_id
            )
        )
        .order_by(everyone.c.user_id)
    )
    matching: dict[str, int] = dict.fromkeys(definitions.segments, 0)
    entering, leaving = dict(matching), dict(matching)
    total = 0
    for row in rows.all():
        total += 1
        found = await evaluate_user(
            conn, definitions, row.user_id, traits=row.traits or {}, states=row.state or {},
            happened=(), now=now,
        )  # fmt: skip
        was = set(row.segments or [])
        for key in found.segments:
            matching[key] += 1
            entering[key] += key not in was
        for key in was & leaving.keys() - found.segments:
            leaving[key] += 1
    m = segment_memberships.c
    deployed: dict[str, int] = dict(
        (
            await conn.execute(
                select(m.segment_key, func.count())
                .where(m.exited_at.is_(None))
                .group_by(m.segment_key)
            )
        ).all()
    )
    return total, [
        Preview(key, matching[key], deployed.get(key, 0), entering[key], leaving[key])
        for key in definitions.segments
    ]
