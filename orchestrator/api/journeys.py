"""Read endpoints: deployed journeys with their funnels, and a user's journeys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text

from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.enrollment import workflow_of
from orchestrator.services import Services
from orchestrator.tables import enrollment_steps, enrollments, journey_versions, journeys

router = APIRouter(
    tags=["journeys"],
    route_class=GuardedRoute,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with the scope"},
    },
)
JourneysReader = Annotated[Caller, Depends(server_key_with("journeys:read"))]
UsersReader = Annotated[Caller, Depends(server_key_with("users:read"))]


class JourneySummary(BaseModel):
    key: str
    name: str
    current_version: int
    active: bool
    trigger: str
    enrollments: dict[str, int]
    converted: int


class StepCount(BaseModel):
    step: str
    kind: str
    visits: int
    users: int


class VersionInfo(BaseModel):
    version: int
    deployed_at: datetime
    source_file: str


class JourneyDetail(JourneySummary):
    spec: dict[str, Any]
    versions: list[VersionInfo]
    steps: list[StepCount]


class UserJourney(BaseModel):
    enrollment_id: int
    journey_key: str
    version: int
    status: str
    current_step: str | None
    entered_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    converted_at: datetime | None
    instance: str = Field(description="A keyed journey's key (a cart id, say); '' otherwise")
    workflow_id: str | None = Field(
        description="The journey's Temporal workflow; none for a user held out"
    )


async def _summaries(services: Services, key: str | None = None) -> list[dict[str, Any]]:
    query = (
        select(
            journeys.c.key,
            journeys.c.name,
            journeys.c.current_version,
            journeys.c.active,
            journey_versions.c.spec,
        )
        .join(
            journey_versions,
            (journey_versions.c.journey_key == journeys.c.key)
            & (journey_versions.c.version == journeys.c.current_version),
        )
        .order_by(journeys.c.key)
    )
    if key is not None:
        query = query.where(journeys.c.key == key)
    counts = select(
        enrollments.c.journey_key,
        enrollments.c.status,
        func.count().label("n"),
        func.count(enrollments.c.converted_at).label("converted"),
    ).group_by(enrollments.c.journey_key, enrollments.c.status)
    async with services.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        tallies = (await conn.execute(counts)).all()
    by_key: dict[str, dict[str, int]] = {}
    converted: dict[str, int] = {}
    for row in tallies:
        by_key.setdefault(row.journey_key, {})[row.status] = row.n
        converted[row.journey_key] = converted.get(row.journey_key, 0) + row.converted
    return [
        {
            "key": r.key,
            "name": r.name,
            "current_version": r.current_version,
            "active": r.active,
            "trigger": r.spec["trigger"].get("event")
            or f"audience {r.spec['trigger']['audience']['segment']}",
            "enrollments": by_key.get(r.key, {}),
            "converted": converted.get(r.key, 0),
            "spec": r.spec,
        }
        for r in rows
    ]


@router.get("/v1/journeys", response_model=list[JourneySummary])
async def list_journeys(services: ServicesDep, _caller: JourneysReader) -> list[dict[str, Any]]:
    """Deployed journeys with enrollment counts by status."""
    return await _summaries(services)


@router.get(
    "/v1/journeys/{key}",
    response_model=JourneyDetail,
    responses={404: {"description": "No such journey"}},
)
async def get_journey(
    services: ServicesDep, _caller: JourneysReader, key: str = Path(max_length=200)
) -> dict[str, Any]:
    """One journey: its current definition, versions and per-step funnel."""
    found = await _summaries(services, key)
    if not found:
        raise HTTPException(404, f"no journey '{key}'")
    async with services.engine.connect() as conn:
        versions = (
            await conn.execute(
                select(
                    journey_versions.c.version,
                    journey_versions.c.deployed_at,
                    journey_versions.c.source_file,
                )
                .where(journey_versions.c.journey_key == key)
                .order_by(journey_versions.c.version.desc())
            )
        ).all()
        steps = (
            await conn.execute(
                select(
                    enrollment_steps.c.step,
                    enrollment_steps.c.kind,
                    func.count().label("visits"),
                    func.count(enrollment_steps.c.enrollment_id.distinct()).label("users"),
                )
                .join(enrollments, enrollments.c.id == enrollment_steps.c.enrollment_id)
                .where(enrollments.c.journey_key == key)
                .group_by(enrollment_steps.c.step, enrollment_steps.c.kind)
                .order_by(text("users DESC"), enrollment_steps.c.step)
            )
        ).all()
    return {
        **found[0],
        "versions": [dict(v._mapping) for v in versions],
        "steps": [dict(s._mapping) for s in steps],
    }


@router.get("/v1/users/{user_id}/journeys", response_model=list[UserJourney])
async def user_journeys(
    services: ServicesDep,
    caller: UsersReader,
    user_id: str = Path(min_length=1, max_length=200),
) -> list[dict[str, Any]]:
    """Every journey a user entered, newest first, with where they are or why they left."""
    async with services.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    enrollments.c.id.label("enrollment_id"),
                    enrollments.c.journey_key,
                    enrollments.c.version,
                    enrollments.c.status,
                    enrollments.c.current_step,
                    enrollments.c.entered_at,
                    enrollments.c.ended_at,
                    enrollments.c.end_reason,
                    enrollments.c.converted_at,
                    enrollments.c.instance,
                    enrollments.c.user_id,
                    enrollments.c.workflow_id,
                )
                .where(enrollments.c.user_id == user_id)
                .order_by(enrollments.c.entered_at.desc(), enrollments.c.id.desc())
            )
        ).all()
    await record_use(services, caller, "users.journeys.read", user_id)
    return [
        {
            **r._mapping,
            # A held-out user is recorded, never started: there is no workflow to find.
            "workflow_id": None if r.status == "holdout" else workflow_of(r),
        }
        for r in rows
    ]
