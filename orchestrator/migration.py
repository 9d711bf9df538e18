"""Moving users already inside a journey onto a newer version (`migrate:`).

By default users stay on the version they entered. A version with `migrate` takes in
the users of the versions it names: deploy checks that its map sends every step of
those versions somewhere and counts who is where now (`journeys deploy --dry-run`
shows it, storing nothing). Once deployed, the worker's upkeep tells each affected
workflow to move (the `migrate` signal), a page of enrollments at a time with a cursor
in `journey_versions`, so a crash repeats at most a page (a second signal changes
nothing). Each workflow moves at its next safe point and records its new version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.enrollment import workflow_of
from orchestrator.sources import Problem, Source
from orchestrator.tables import enrollments, journey_versions, journeys
from workflows.messages import MigrateSignal
from workflows.spec import Journey

PAGE = 500

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """The users at one step of an old version, and where they go."""

    version: int
    step: str
    users: int
    target: str | None  # a step of the new version, `exit`, or None: nowhere (refused)


@dataclass
class MigrationPlan:
    journey: str
    version: int  # the version that takes them in
    moves: list[Move] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan as a reviewer reads it."""
        out = [f"{self.journey} v{self.version} takes in the users of "
               + ", ".join(f"v{v}" for v in sorted({m.version for m in self.moves}))]  # fmt: skip
        for move in self.moves:
            where = "NOWHERE" if move.target is None else move.target
            out.append(f"  v{move.version} {move.step:<24} {move.users:>7} user(s) -> {where}")
        return out


async def plan_migration(
    conn: AsyncConnection, journey: Journey, source: Source, version: int
) -> MigrationPlan:
    """Check `journey.migrate` against the stored versions it names, and count the users
    inside each of their steps now."""
    rule = journey.migrate
    assert rule is not None
    plan = MigrationPlan(journey.journey, version)
    stored = {
        row.version: Journey.model_validate(row.spec)
        for row in await conn.execute(
            select(journey_versions.c.version, journey_versions.c.spec).where(
                journey_versions.c.journey_key == journey.journey,
                journey_versions.c.version.in_(rule.from_),
            )
        )
    }
    counts: dict[tuple[int, str], int] = {}
    for old_version, step, users in await conn.execute(
        select(enrollments.c.version, enrollments.c.current_step, func.count())
        .where(
            enrollments.c.journey_key == journey.journey,
            enrollments.c.status == "active",
            enrollments.c.version.in_(rule.from_),
        )
        .group_by(enrollments.c.version, enrollments.c.current_step)
    ):
        # Before its first record a user is at the start.
        start = stored[old_version].start if old_version in stored else ""
        key = (old_version, step or start)
        counts[key] = counts.get(key, 0) + users
    known_steps: set[str] = set()
    for index, old_version in enumerate(rule.from_):
        old = stored.get(old_version)
        if old is None or old_version >= version:
            plan.problems.append(source.problem(
                ["migrate", "from", index],
                f"{journey.journey} has no version {old_version} before this one (v{version})",
            ))  # fmt: skip
            continue
        if old.instance != journey.instance:
            plan.problems.append(source.problem(
                ["migrate", "from", index],
                f"v{old_version} is keyed by {old.instance or 'nothing'} and this version by "
                f"{journey.instance or 'nothing'}: its users cannot move (their keys would not "
                "match their events)",
            ))  # fmt: skip
            continue
        known_steps.update(old.steps)
        for step in old.step_order():
            target = rule.target(step, journey.steps)
            plan.moves.append(Move(old_version, step, counts.get((old_version, step), 0), target))
            if target is None:
                plan.problems.append(source.problem(
                    ["migrate", "steps"] if rule.steps else ["migrate"],
                    f"step '{step}' of v{old_version} has no target: this version has no "
                    f"step '{step}'; map it to one of its steps or to `exit`",
                ))  # fmt: skip
    for step in rule.steps:
        if known_steps and step not in known_steps:
            plan.problems.append(source.problem(
                ["migrate", "steps", step], f"no step '{step}' in the versions it moves from",
                key=True,
            ))  # fmt: skip
    return plan


async def move_users(engine: AsyncEngine, client: Client, *, page: int = PAGE) -> int:
    """Tell the next page of users of each deployed migration to move; how many were told.

    Only a journey's current version moves users: one superseded before it finished
    leaves the rest to the newer version's own `migrate`, if it has one."""
    told = 0
    async with engine.begin() as conn:
        pending = (
            await conn.execute(
                select(
                    journey_versions.c.journey_key,
                    journey_versions.c.version,
                    journey_versions.c.spec["migrate"]["from"].label("sources"),
                    journey_versions.c.migration_cursor,
                )
                .join(
                    journeys,
                    (journeys.c.key == journey_versions.c.journey_key)
                    & (journeys.c.current_version == journey_versions.c.version),
                )
                .where(
                    journey_versions.c.migrated_at.is_(None),
                    func.jsonb_typeof(journey_versions.c.spec["migrate"]) == "object",
                )
                .with_for_update(of=journey_versions, skip_locked=True)
            )
        ).all()
        for row in pending:
            found = (
                await conn.execute(
                    select(
                        enrollments.c.id,
                        enrollments.c.journey_key,
                        enrollments.c.user_id,
                        enrollments.c.instance,
                        enrollments.c.workflow_id,
                    )
                    .where(
                        enrollments.c.journey_key == row.journey_key,
                        enrollments.c.status == "active",
                        enrollments.c.version.in_([int(v) for v in row.sources]),
                        enrollments.c.id > row.migration_cursor,
                    )
                    .order_by(enrollments.c.id)
                    .limit(page)
                )
            ).all()
            signal = MigrateSignal(version=row.version)
            for enrollment in found:
                workflow_id = workflow_of(enrollment)
                try:
                    await client.get_workflow_handle(workflow_id).signal("migrate", signal)
                except RPCError as exc:
                    # Ended meanwhile: nothing to move. Anything else is one user's problem
                    # (the rest still move); the worker's log says whose.
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        log.warning("could not tell %s to move to v%d: %s", workflow_id,
                                    row.version, exc)  # fmt: skip
            told += len(found)
            done = {"migrated_at": func.now()} if len(found) < page else {}
            cursor = found[-1].id if found else row.migration_cursor
            await conn.execute(
                update(journey_versions)
                .where(
                    journey_versions.c.journey_key == row.journey_key,
                    journey_versions.c.version == row.version,
                )
                .values(migration_cursor=cursor, **done)
            )
    return told
