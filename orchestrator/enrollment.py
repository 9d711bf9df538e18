"""Enrolling users in journeys: who may enter now, and starting their workflow.

Entry is decided against enrollments in Postgres (re-entry policy, holdout), never
left to Temporal's workflow id reuse rules; the one-active-enrollment index makes a
racing second trigger lose. A workflow gets the installation's id with its input, the
namespace of its message ids.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Text, and_, literal, or_, select, text, true
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from orchestrator.event_store import StoredEvent
from orchestrator.experiments import assignments
from orchestrator.experiments.assignments import GlobalControl
from orchestrator.metrics.journeys import count_entry
from orchestrator.registry import Snapshot
from orchestrator.tables import enrollments, installation
from workflows import search
from workflows.assignment import in_holdout
from workflows.messages import GENERATION, DeployedJourney, EnterSignal, EventSignal, JourneyInput
from workflows.spec import Journey, ReEntryAfter


def blocking_enrollments(
    journey: Journey, now: datetime, instance: str = ""
) -> ColumnElement[bool]:
    """Which earlier enrollments of the same user keep them from entering now: one still
    active for the same instance; and, as the re-entry policy says, any entry (of any
    instance: re-entry rules are the user's, not the cart's)."""
    policy = journey.re_entry
    active = and_(enrollments.c.status == "active", enrollments.c.instance == instance)
    if policy == "never":
        return true()  # any earlier entry
    if isinstance(policy, ReEntryAfter):
        return or_(active, enrollments.c.entered_at > now - policy.after)
    return active


@dataclass(frozen=True)
class Entry:
    """A user entered a journey: the workflow to start once the enrollment is committed."""

    deployed: DeployedJourney
    event: StoredEvent
    enrollment_id: int
    entered_at: datetime
    instance: str = ""  # a keyed journey's key


async def enroll(
    conn: AsyncConnection,
    deployed: DeployedJourney,
    event: StoredEvent,
    now: datetime,
    *,
    fresh: bool,
    snapshot: Snapshot,
    global_control: GlobalControl | None = None,
    instance: str = "",
) -> Entry | None:
    """Insert the enrollment if the user may enter; on a re-route, find it again. The
    user's holdout and global-control assignments are recorded the first time.

    An `Entry` with enrollment id 0 means "entered the control group": no workflow.
    """
    if not fresh:
        found = await _enrollment_for_trigger(conn, deployed.key, event.message_id)
        if found is not None:
            if found.status != "active":
                return None
            if found.version != deployed.version:
                deployed = snapshot.versions[(deployed.key, found.version)]
            return Entry(deployed, event, found.id, found.entered_at, found.instance)
    spec = deployed.spec
    held_out = in_holdout(deployed.key, event.user_id, spec.holdout)
    if spec.holdout:
        # Control-group rows are not covered by the one-active-enrollment index, so
        # two racing triggers are serialised by a lock instead.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"{deployed.key}\x1f{event.user_id}"},
        )
    earlier = (
        select(enrollments.c.id)
        .where(
            enrollments.c.journey_key == deployed.key,
            enrollments.c.user_id == event.user_id,
            blocking_enrollments(spec, now, instance),
        )
        .exists()
    )
    values = select(
        literal(deployed.key),
        literal(deployed.version),
        literal(event.user_id),
        literal("holdout" if held_out else "active"),
        literal(event.message_id),
        literal(now),
        literal(now if held_out else None, DateTime(timezone=True)),
        literal("holdout" if held_out else None, Text),
        literal(instance),
    ).where(~earlier)
    # A racing trigger for the same user loses on the one-active-enrollment index.
    row = (
        await conn.execute(
            insert(enrollments)
            .from_select(
                [
                    "journey_key",
                    "version",
                    "user_id",
                    "status",
                    "trigger_message_id",
                    "entered_at",
                    "ended_at",
                    "end_reason",
                    "instance",
                ],
                values,
            )
            .on_conflict_do_nothing()
            .returning(enrollments.c.id, enrollments.c.entered_at)
        )
    ).one_or_none()
    if row is None:
        return None
    count_entry(deployed.key, holdout=held_out)
    if spec.holdout:
        await assignments.record(
            conn, journey_key=deployed.key, version=deployed.version, kind="holdout",
            experiment_key="holdout", mode="fixed", user_id=event.user_id,
            enrollment_id=row.id, arm="control" if held_out else "treatment",
            propensity=(spec.holdout if held_out else 100 - spec.holdout) / 100, at=now,
        )  # fmt: skip
    if global_control is not None and global_control.percent > 0:
        share = global_control.percent / 100
        controlled = global_control.holds(event.user_id)
        await assignments.record(
            conn, journey_key=assignments.WORKSPACE, version=None, kind="global_control",
            experiment_key="global_control", mode="fixed", user_id=event.user_id,
            enrollment_id=row.id, arm="control" if controlled else "treatment",
            propensity=share if controlled else 1 - share, at=now,
        )  # fmt: skip
    return Entry(deployed, event, 0 if held_out else row.id, row.entered_at, instance)


class Installation:
    """This database's installation id: read from Postgres once, then kept for the process.

    The migration makes it. A database emptied since (the tests empty every table) gets
    a new random one here, so that its journeys never fall back to the shared namespace.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._id: uuid.UUID | None = None
        self._lock = asyncio.Lock()

    async def id(self) -> uuid.UUID:
        async with self._lock:
            if self._id is None:
                self._id = await self._read()
            return self._id

    async def _read(self) -> uuid.UUID:
        async with self._engine.begin() as conn:
            await conn.execute(insert(installation).values(singleton=True).on_conflict_do_nothing())
            found: uuid.UUID = (await conn.execute(select(installation.c.id))).scalar_one()
        return found


async def start_journey(
    client: Client,
    entry: Entry,
    *,
    task_queue: str,
    default_timezone: str,
    history_limit: int,
    installation_id: uuid.UUID,
    assignments: Mapping[str, str] | None = None,
) -> None:
    """Signal-with-start the user's workflow for this enrollment (idempotent: an existing
    run just receives the `enter` signal and ignores its own enrollment). `assignments`
    force variants (journey tests do)."""
    deployed, event = entry.deployed, entry.event
    enrollment_id, entered_at = entry.enrollment_id, entry.entered_at
    trigger = as_signal(event)
    spec = deployed.spec
    summary = f"{spec.name} v{deployed.version} · user {event.user_id}"
    if entry.instance:
        summary += f" · {entry.instance}"
    await client.start_workflow(
        "JourneyWorkflow",
        JourneyInput(
            journey=deployed,
            user_id=event.user_id,
            enrollment_id=enrollment_id,
            entered_at=entered_at,
            trigger=trigger,
            default_timezone=default_timezone,
            history_limit=history_limit,
            installation_id=installation_id,
            assignments=dict(assignments or {}),
            instance=entry.instance,
            generation=GENERATION,
        ),
        id=search.workflow_id(deployed.key, event.user_id, entry.instance),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="enter",
        start_signal_args=[
            EnterSignal(
                enrollment_id=enrollment_id,
                version=deployed.version,
                trigger=trigger,
                installation_id=installation_id,
            )
        ],
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.JOURNEY_KEY, deployed.key),
                SearchAttributePair(search.JOURNEY_VERSION, deployed.version),
                SearchAttributePair(search.USER_ID, event.user_id),
                SearchAttributePair(search.JOURNEY_STEP, spec.start),
                SearchAttributePair(search.JOURNEY_STATUS, "running"),
                *(
                    [SearchAttributePair(search.JOURNEY_INSTANCE, entry.instance)]
                    if entry.instance
                    else []
                ),
            ]
        ),
        static_summary=summary.encode()[:200].decode(errors="ignore"),
        static_details=(
            f"**{spec.name}** (`{deployed.key}` version {deployed.version})\n\n"
            f"{spec.description.strip()}\n\n"
            f"User `{event.user_id}` entered on `{event.name}` "
            f"(message `{event.message_id}`), enrollment {enrollment_id}."
        ),
    )


def workflow_of(enrollment: Any) -> str:
    """An enrollment's workflow (a row with its journey, user, instance and workflow id):
    the user's own, or the one it kept when the user it entered as was merged."""
    return enrollment.workflow_id or search.workflow_id(
        enrollment.journey_key, enrollment.user_id, enrollment.instance
    )


def as_signal(event: StoredEvent) -> EventSignal:
    return EventSignal(
        message_id=event.message_id,
        name=event.name,
        properties=event.properties,
        timestamp=event.timestamp,
    )


async def _enrollment_for_trigger(conn: AsyncConnection, journey_key: str, message_id: str) -> Any:
    return (
        await conn.execute(
            select(
                enrollments.c.id,
                enrollments.c.status,
                enrollments.c.version,
                enrollments.c.entered_at,
                enrollments.c.instance,
            ).where(
                enrollments.c.journey_key == journey_key,
                enrollments.c.trigger_message_id == message_id,
            )
        )
    ).one_or_none()
