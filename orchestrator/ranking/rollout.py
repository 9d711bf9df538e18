"""Which versions serve: the active one, a canary beside it, switches and their record.

    activate    make a version the live one (also a rollback to any older version)
    canary      serve a version to a stable share of users (within a segment, when
                given) beside the active one; changing the share keeps who was in
    promote     the canary becomes the active version
    rollback    end the canary; with none running, switch back to the version that
                was active before the current one
    degrade     the guard's mark on an active version whose online results fell under
                the floor: the baseline answers until a version is activated

A user is in the canary when a hash of (canary version, user id) falls under the share
(so raising the share keeps the users already in it, and each new canary draws afresh)
and, with a segment, the user's traits satisfy it. Every switch is one transaction with
its audit log entry (`ranking.activate`, `.canary`, `.promote`, `.rollback`, `.degrade`,
subject `ranking:vN`), which is also where a version's card reads who did what when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.access import audit
from orchestrator.tables import audit_log, ranking_models
from rules.expressions import holds, syntax_error, user_context
from workflows.assignment import BUCKETS, bucket

MAX_SHARE = 0.5  # a canary larger than the active arm is a rollout, not a canary
GUARD = audit.Actor("system", "ranking guard")


# What a version that stops serving becomes: rejected again if it failed the gate (a
# person may canary or activate any version), else inactive.
_RESTING = case(
    (ranking_models.c.card["passed_gate"].as_boolean().is_(False), "rejected"),
    else_="inactive",
)


class VersionError(Exception):
    """There is no such version, nothing to train on, or the switch is not possible."""


@dataclass(frozen=True, slots=True)
class Canary:
    version: int
    share: float  # 0..1
    segment: str | None
    since: datetime

    def drawn(self, user_id: str) -> bool:
        """Whether the user's hash falls in the share (the segment aside)."""
        # the experiments' consistent hashing, keyed by the version: a new canary draws anew
        return bucket("canary", str(self.version), user_id) < self.share * BUCKETS

    def serves(self, user_id: str, traits: Mapping[str, Any] | None) -> bool:
        """Whether the canary serves this user (`traits` are only read with a segment)."""
        return self.drawn(user_id) and self.eligible(user_id, traits)

    def eligible(self, user_id: str, traits: Mapping[str, Any] | None) -> bool:
        """Whether the user is in the population the canary is compared within."""
        if self.segment is None:
            return True
        return holds(self.segment, {"user": user_context(user_id, traits or {})})


def subject(version: int) -> str:
    return f"ranking:v{version}"


async def serialised(conn: AsyncConnection) -> None:
    """In the caller's transaction: wait for any other switch (a person's command, a
    training run, the guard) to commit, so that what is read next stays true."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('ranking-versions'))"))


async def running_canary(conn: AsyncConnection) -> Canary | None:
    row = (
        await conn.execute(
            select(
                ranking_models.c.version, ranking_models.c.canary_share,
                ranking_models.c.canary_segment, ranking_models.c.canary_since,
            ).where(ranking_models.c.status == "canary")
        )
    ).one_or_none()  # fmt: skip
    if row is None:
        return None
    return Canary(row.version, float(row.canary_share), row.canary_segment, row.canary_since)


async def active_version(conn: AsyncConnection) -> int | None:
    found = await conn.scalar(
        select(ranking_models.c.version).where(ranking_models.c.status == "active")
    )
    return None if found is None else int(found)


async def activated_at(conn: AsyncConnection, version: int) -> datetime | None:
    """When `version` last went live (activated, promoted or trained to it), if recorded."""
    found: datetime | None = await conn.scalar(
        select(func.max(audit_log.c.at)).where(
            audit_log.c.subject == subject(version),
            audit_log.c.action.in_(("ranking.activate", "ranking.promote")),
        )
    )
    return found


async def _status(conn: AsyncConnection, version: int) -> str:
    status = await conn.scalar(
        select(ranking_models.c.status).where(ranking_models.c.version == version).with_for_update()
    )
    if status is None:
        raise VersionError(f"there is no version {version}")
    return str(status)


async def make_active(
    conn: AsyncConnection, version: int, *, actor: audit.Actor, now: datetime, how: str
) -> int | None:
    """In the caller's transaction: `version` becomes the active one (clearing any
    degraded mark and, if it was the canary, its canary state); the version it
    replaced, if any, becomes inactive and is returned. A canary still running is
    compared afresh from now: its "active" arm is another version from here on."""
    await serialised(conn)
    previous = await active_version(conn)
    await conn.execute(
        update(ranking_models)
        .where(ranking_models.c.status == "canary", ranking_models.c.version != version)
        .values(canary_since=now)
    )
    await conn.execute(
        update(ranking_models)
        .where(ranking_models.c.status == "active", ranking_models.c.version != version)
        .values(status=_RESTING)
    )
    await conn.execute(
        update(ranking_models)
        .where(ranking_models.c.version == version)
        .values(
            status="active", canary_share=None, canary_segment=None, canary_since=None,
            degraded_at=None, degraded_reason=None,
        )
    )  # fmt: skip
    action = "ranking.promote" if how == "promoted" else "ranking.activate"
    await audit.record(conn, actor, action, subject=subject(version), now=now,
                       details={"previous": previous, "how": how})  # fmt: skip
    return previous if previous != version else None


async def activate(
    engine: AsyncEngine, version: int, *, actor: audit.Actor, now: datetime
) -> int | None:
    """Make `version` the live one; returns the version it replaced."""
    async with engine.begin() as conn:
        await serialised(conn)
        await _status(conn, version)
        return await make_active(conn, version, actor=actor, now=now, how="activated")


async def start_canary(
    engine: AsyncEngine,
    version: int,
    *,
    share: float,
    segment: str | None,
    actor: audit.Actor,
    now: datetime,
) -> Canary:
    """Serve `version` to `share` (0..MAX_SHARE) of the users beside the active version;
    the same version again changes its share or segment (None keeps the segment, ""
    drops it; the users already drawn stay drawn; the comparison starts afresh, since
    the arms are no longer what they were)."""
    if not 0 < share <= MAX_SHARE:
        raise VersionError(f"the share is a percentage above 0 and at most {MAX_SHARE:.0%}")
    if segment:
        problem = syntax_error(segment, ("user",))
        if problem:
            raise VersionError(f"--segment: {problem}")
    async with engine.begin() as conn:
        await serialised(conn)
        status = await _status(conn, version)
        if status == "active":
            raise VersionError(f"version {version} is the active version already")
        if await active_version(conn) is None:
            raise VersionError(
                "no version is active: a canary is compared with the active one "
                f"(`orchestrator ranking activate {version}` instead)"
            )
        running = await running_canary(conn)
        if running is not None and running.version != version:
            raise VersionError(
                f"version {running.version} is the canary already: `orchestrator ranking "
                "promote` or `rollback` it first"
            )
        if segment is None and running is not None:
            segment = running.segment  # a new share alone keeps the segment
        segment = segment or None  # "" drops it: everyone
        unchanged = running is not None and (running.share, running.segment) == (share, segment)
        since = running.since if running is not None and unchanged else now
        await conn.execute(
            update(ranking_models)
            .where(ranking_models.c.version == version)
            .values(status="canary", canary_share=share, canary_segment=segment,
                    canary_since=since)
        )  # fmt: skip
        await audit.record(conn, actor, "ranking.canary", subject=subject(version), now=now,
                           details={"share": share, "segment": segment})  # fmt: skip
    return Canary(version, share, segment, since)


async def promote(engine: AsyncEngine, *, actor: audit.Actor, now: datetime) -> int:
    """The canary becomes the active version; returns its number."""
    async with engine.begin() as conn:
        await serialised(conn)
        running = await running_canary(conn)
        if running is None:
            raise VersionError("no canary is running (`orchestrator ranking canary N` starts one)")
        await _status(conn, running.version)
        await make_active(conn, running.version, actor=actor, now=now, how="promoted")
        return running.version


async def end_canary(
    conn: AsyncConnection, canary: Canary, *, actor: audit.Actor, now: datetime, reason: str
) -> bool:
    """In the caller's transaction: the canary stops serving (its version is inactive).
    False, and nothing recorded, when it is not the canary any more."""
    await serialised(conn)
    ended = await conn.execute(
        update(ranking_models)
        .where(ranking_models.c.version == canary.version, ranking_models.c.status == "canary")
        .values(status=_RESTING, canary_share=None, canary_segment=None, canary_since=None)
    )
    if not ended.rowcount:
        return False
    details = {"canary": True, "reason": reason, "share": canary.share,
               "since": canary.since.isoformat()}  # fmt: skip
    await audit.record(conn, actor, "ranking.rollback", subject=subject(canary.version),
                       now=now, details=details)  # fmt: skip
    return True


async def rollback(
    engine: AsyncEngine, *, actor: audit.Actor, now: datetime, reason: str = "by hand"
) -> str:
    """End the canary; with none running, switch back to the version that was active
    before the current one. Says what it did."""
    async with engine.begin() as conn:
        await serialised(conn)
        running = await running_canary(conn)
        if running is not None:
            await _status(conn, running.version)
            await end_canary(conn, running, actor=actor, now=now, reason=reason)
            return f"the canary version {running.version} is stopped"
        current = await active_version(conn)
        if current is None:
            raise VersionError("no version is active and no canary runs: nothing to roll back")
        # How `current` went live last, a rollback to it aside (so that a second
        # rollback goes further back rather than undoing the first).
        previous = await conn.scalar(
            select(audit_log.c.details["previous"].as_integer())
            .where(audit_log.c.subject == subject(current),
                   audit_log.c.action.in_(("ranking.activate", "ranking.promote")),
                   audit_log.c.details["how"].as_string() != "rolled back")
            .order_by(audit_log.c.id.desc())
            .limit(1)
        )  # fmt: skip
        if previous is None:
            raise VersionError(
                f"no canary runs and no version before {current} is recorded: "
                "`orchestrator ranking activate N` switches to any version"
            )
        await _status(conn, int(previous))
        await make_active(conn, int(previous), actor=actor, now=now, how="rolled back")
        return f"version {previous} is active again (instead of {current})"


async def degrade(conn: AsyncConnection, version: int, *, reason: str, now: datetime) -> bool:
    """In the caller's transaction: mark the active version degraded (the baseline
    answers); False, and nothing recorded, when it is not the active one any more."""
    await serialised(conn)
    marked = await conn.execute(
        update(ranking_models)
        .where(ranking_models.c.version == version, ranking_models.c.status == "active",
               ranking_models.c.degraded_at.is_(None))
        .values(degraded_at=now, degraded_reason=reason)
    )  # fmt: skip
    if not marked.rowcount:
        return False
    await audit.record(conn, GUARD, "ranking.degrade", subject=subject(version), now=now,
                       details={"reason": reason})  # fmt: skip
    return True
