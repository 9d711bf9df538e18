"""`/v1/tracking-plan` and `/v1/tracking-plan/violations`: the plan in force, and what
broke it. Counts and field names only, no values sent: no personal data, so reads are
not audited."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from orchestrator.api.auth import Caller, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.tracking_plan.store import deployed_plan, list_violations, since_day
from rules.durations import DurationError

router = APIRouter(
    tags=["tracking plan"],
    route_class=GuardedRoute,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with the scope"},
    },
)
# Violation counts are a report on the data that came in.
ReportsReader = Annotated[Caller, Depends(server_key_with("reports:read"))]


class DeployedTrackingPlan(BaseModel):
    version: int
    deployed_at: datetime
    mode: Literal["enforce", "report"]
    unplanned_events: Literal["allow", "report", "refuse"]
    events: dict[str, dict[str, Any]] = Field(description="A JSON Schema per event's properties")
    identify: dict[str, Any] | None = Field(description="The JSON Schema of identify traits")


class ViolationCount(BaseModel):
    type: Literal["track", "identify"]
    event: str = Field(description="The event name (empty for identify)")
    field: str = Field(description="Inside the message, e.g. properties.price (list "
                       "positions as [])")  # fmt: skip
    problem: str = Field(description="What the plan says, e.g. `type: number`, `required`")
    count: int = Field(description="Messages stored with this violation")
    first_seen: datetime
    last_seen: datetime
    example_message_id: str = Field(description="The messageId of a recent one")
    example_detail: str


class Violations(BaseModel):
    plan_version: int = Field(description="Counted under this version of the plan")
    since: date | None = Field(description="First UTC day counted (none: all)")
    violations: list[ViolationCount]


@router.get(
    "/v1/tracking-plan",
    response_model=DeployedTrackingPlan,
    responses={404: {"description": "No tracking plan is in force"}},
)
async def get_plan(services: ServicesDep, _caller: ReportsReader) -> dict[str, Any]:
    """The tracking plan in force (deployed with `orchestrator journeys deploy`)."""
    async with services.engine.connect() as conn:
        found = await deployed_plan(conn)
    if found.plan is None or found.deployed_at is None:
        raise HTTPException(404, {"error": "no tracking plan is in force"})
    return {"version": found.version, "deployed_at": found.deployed_at, **found.plan.as_json()}


@router.get("/v1/tracking-plan/violations", response_model=Violations)
async def get_violations(
    services: ServicesDep,
    _caller: ReportsReader,
    since: Annotated[
        str | None, Query(max_length=20, description="A duration back from now, like 7d")
    ] = None,
    version: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="Plan version (default: the one in force)"),
    ] = None,
) -> dict[str, Any]:
    """Violations accepted under `mode: report` (and unplanned events under `report`),
    per event, field and problem, most frequent first."""
    try:
        first = since_day(since, services.clock())
    except DurationError as exc:
        raise HTTPException(400, {"error": str(exc), "field": "since"}) from None
    async with services.engine.connect() as conn:
        found = await list_violations(conn, since=first, plan_version=version)
        in_force = version or (await deployed_plan(conn)).version
    return {"plan_version": in_force, "since": first, "violations": found}
