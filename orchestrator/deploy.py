"""Deploying a workspace: every changed journey becomes a new immutable version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.access import audit
from orchestrator.migration import MigrationPlan, plan_migration
from orchestrator.segments.definitions import Definitions
from orchestrator.sources import InvalidSource
from orchestrator.tables import journey_versions, journeys, segment_definitions
from orchestrator.tracking_plan.plan import TrackingPlan
from orchestrator.tracking_plan.store import deploy_plan
from orchestrator.validation import CheckedJourney, check_workspace
from orchestrator.workspace import Workspace

Change = Literal["new", "updated", "unchanged", "reactivated", "retired"]


@dataclass(frozen=True)
class Deployed:
    key: str
    version: int
    change: Change
    migration: MigrationPlan | None = None  # a new version that moves users inside


def content_of(checked: CheckedJourney) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The stored form of a journey (spec and templates) and its content hash."""
    spec = checked.journey.model_dump(mode="json")
    templates = {
        name: template.model_dump(mode="json", exclude_none=True)
        for name, template in checked.templates.items()
    }
    canonical = json.dumps({"spec": spec, "templates": templates}, sort_keys=True)
    return spec, templates, hashlib.sha256(canonical.encode()).hexdigest()


# How the traits and segments, and the tracking plan, of a deploy are listed beside its
# journeys.
DEFINITIONS = "traits+segments"
TRACKING_PLAN = "tracking-plan"


class Keep(Enum):
    """Leave the tracking plan in force as it is (None instead removes it)."""

    PLAN = "keep"


async def deploy(
    engine: AsyncEngine,
    checked: Sequence[CheckedJourney],
    *,
    definitions: Definitions | None = None,
    tracking_plan: TrackingPlan | Keep | None = Keep.PLAN,
    actor: audit.Actor | None = None,
    dry_run: bool = False,
) -> list[Deployed]:
    """Store new versions of changed journeys and retire journeys no longer in the workspace.

    Call only with a fully valid workspace: validation happens before, so that nothing
    is stored when anything is invalid. One transaction; concurrent deploys queue. Each
    change is in the audit log, by `actor` (the person at the command line by default).
    A version that moves users (`migrate`) is checked against the versions it names,
    and InvalidSource stores nothing. `dry_run` says what would happen and stores nothing.
    """
    results: list[Deployed] = []
    async with engine.connect() as conn, conn.begin() as transaction:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('journey-deploy'))"))
        latest = {
            row.key: row
            for row in await conn.execute(
                select(
                    journeys.c.key,
                    journeys.c.current_version,
                    journeys.c.active,
                    journey_versions.c.content_hash,
                ).join(
                    journey_versions,
                    (journey_versions.c.journey_key == journeys.c.key)
                    & (journey_versions.c.version == journeys.c.current_version),
                )
            )
        }
        for item in checked:
            key = item.journey.journey
            spec, templates, digest = content_of(item)
            current = latest.get(key)
            if current is not None and current.content_hash == digest:
                if not current.active:
                    await conn.execute(
                        update(journeys)
                        .where(journeys.c.key == key)
                        .values(active=True, updated_at=func.now())
                    )
                results.append(
                    Deployed(key, current.current_version,
                             "unchanged" if current.active else "reactivated")
                )  # fmt: skip
                continue
            version = 1 if current is None else current.current_version + 1
            await conn.execute(
                insert(journeys)
                .values(key=key, name=item.journey.name, current_version=version, active=True)
                .on_conflict_do_update(
                    index_elements=[journeys.c.key],
                    set_={
                        "name": item.journey.name,
                        "current_version": version,
                        "active": True,
                        "updated_at": func.now(),
                    },
                )
            )
            await conn.execute(
                insert(journey_versions).values(
                    journey_key=key,
                    version=version,
                    spec=spec,
                    templates=templates,
                    content_hash=digest,
                    source_file=item.file,
                    source_text=item.source.text,
                )
            )
            migration = None
            if item.journey.migrate is not None:
                migration = await plan_migration(conn, item.journey, item.source, version)
            change: Change = "new" if current is None else "updated"
            results.append(Deployed(key, version, change, migration))
        if definitions is not None and (done := await _deploy_definitions(conn, definitions)):
            results.append(done)
        if not isinstance(tracking_plan, Keep) and (
            planned := await deploy_plan(conn, tracking_plan)
        ):
            results.append(Deployed(TRACKING_PLAN, *planned))
        deployed_keys = {item.journey.journey for item in checked}
        for key, row in latest.items():
            if key not in deployed_keys and row.active:
                await conn.execute(
                    update(journeys)
                    .where(journeys.c.key == key)
                    .values(active=False, updated_at=func.now())
                )
                results.append(Deployed(key, row.current_version, "retired"))
        who, now = actor or audit.command_line(), datetime.now(UTC)
        for result in results:
            if result.change != "unchanged":
                what = {DEFINITIONS: "definitions", TRACKING_PLAN: "tracking_plan"}.get(
                    result.key, "journey")  # fmt: skip
                details = {what: result.key, "version": result.version,
                           "change": result.change}  # fmt: skip
                await audit.record(conn, who, "journeys.deploy", details=details, now=now)
        problems = [p for r in results if r.migration for p in r.migration.problems]
        if problems:
            raise InvalidSource(problems)  # rolls back: nothing is stored
        if dry_run:
            await transaction.rollback()
    return results


async def deploy_workspace(
    engine: AsyncEngine, workspace: Workspace, *, dry_run: bool = False
) -> list[Deployed]:
    """Validate every journey of the workspace, then deploy; InvalidSource stores nothing."""
    checked, problems = check_workspace(workspace)
    if problems:
        raise InvalidSource(problems)
    return await deploy(engine, checked, definitions=workspace.definitions,
                        tracking_plan=workspace.tracking_plan, dry_run=dry_run)  # fmt: skip


async def _deploy_definitions(conn: AsyncConnection, definitions: Definitions) -> Deployed | None:
    """A new version of the traits and segments when they changed (the refresher then
    brings every user to it: a backfill)."""
    newest = (
        await conn.execute(
            select(segment_definitions.c.version, segment_definitions.c.content_hash)
            .order_by(segment_definitions.c.version.desc())
            .limit(1)
        )
    ).one_or_none()
    digest = definitions.digest()
    if newest is not None and newest.content_hash == digest:
        return Deployed(DEFINITIONS, newest.version, "unchanged")
    if newest is None and not definitions:
        return None  # a workspace that never had any
    version = 1 if newest is None else newest.version + 1
    await conn.execute(
        insert(segment_definitions).values(
            version=version,
            definitions=definitions.as_json(),
            sources=definitions.sources,
            content_hash=digest,
        )
    )
    return Deployed(DEFINITIONS, version, "new" if newest is None else "updated")
