"""`/v1/segments...` and `/v1/users/{id}`: segments' sizes and membership over time, and a
user's profile with its computed traits."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.segments import service
from orchestrator.segments.definitions import deployed
from workflows.spec import IDENTIFIER

router = APIRouter(
    tags=["segments"],
    route_class=GuardedRoute,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with the scope"},
    },
)
JourneysReader = Annotated[Caller, Depends(server_key_with("journeys:read"))]
UsersReader = Annotated[Caller, Depends(server_key_with("users:read"))]
SegmentKey = Annotated[str, Path(pattern=IDENTIFIER)]


class SegmentSummary(BaseModel):
    key: str
    description: str
    when: str = Field(description="The condition over the user's traits")
    members: int
    entered_24h: int
    exited_24h: int


class Day(BaseModel):
    at: datetime = Field(description="The end of the day (24 hours) this row counts")
    members: int
    entered: int
    exited: int


class SegmentDetail(SegmentSummary):
    history: list[Day]


class Member(BaseModel):
    user_id: str
    entered_at: datetime
    exited_at: datetime | None


class ComputedValue(BaseModel):
    value: Any
    computed_at: datetime | None
    changed_at: datetime | None = Field(description="When the value last changed")


class Stay(BaseModel):
    key: str
    entered_at: datetime


class Profile(BaseModel):
    user_id: str
    traits: dict[str, Any] = Field(description="Every trait: sent ones and computed ones")
    computed: dict[str, ComputedValue]
    segments: list[Stay]


@router.get("/v1/segments", response_model=list[SegmentSummary])
async def list_segments(services: ServicesDep, _caller: JourneysReader) -> list[dict[str, Any]]:
    """Deployed segments with their size now and their entries and exits of the last day."""
    async with services.engine.connect() as conn:
        return await service.summaries(conn, services.clock())


@router.get(
    "/v1/segments/{key}",
    response_model=SegmentDetail,
    responses={404: {"description": "No such segment is deployed"}},
)
async def get_segment(
    services: ServicesDep,
    _caller: JourneysReader,
    key: SegmentKey,
    days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> dict[str, Any]:
    """A segment's size at the end of each of the last `days` days, with its daily
    entries and exits."""
    async with services.engine.connect() as conn:
        try:
            return await service.detail(conn, key, services.clock(), days=days)
        except service.UnknownSegment as exc:
            raise HTTPException(404, {"error": str(exc)}) from None


@router.get(
    "/v1/segments/{key}/members",
    response_model=list[Member],
    responses={404: {"description": "No such segment is deployed"}},
)
async def segment_members(
    services: ServicesDep,
    caller: UsersReader,
    key: SegmentKey,
    at: Annotated[datetime | None, Query(description="Members at this time (default: now)")] = None,
    after: Annotated[
        str, Query(max_length=200, description="The last user id of the page before")
    ] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Who was in the segment at a time, in user order; each read is audited."""
    now = services.clock()
    async with services.engine.connect() as conn:
        known = sorted((await deployed(conn)).definitions.segments)
        if key not in known:
            listed = ", ".join(known) or "none deployed"
            raise HTTPException(404, {"error": f"no segment {key!r} (known: {listed})"})
        found = await service.members(conn, key, at=at or now, after=after, limit=limit)
    await record_use(services, caller, "segments.members.read", key)
    return found


@router.get(
    "/v1/users/{user_id}",
    response_model=Profile,
    responses={404: {"description": "No profile or computed trait for this user"}},
)
async def user_profile(
    services: ServicesDep,
    caller: UsersReader,
    user_id: str = Path(min_length=1, max_length=200),
) -> dict[str, Any]:
    """A user's profile: sent and computed traits (each computed one with when it was
    computed and last changed) and the segments they are in."""
    async with services.engine.connect() as conn:
        found = await service.profile(conn, user_id)
    if found is None:
        raise HTTPException(404, {"error": f"no profile for user {user_id!r}"})
    await record_use(services, caller, "users.profile.read", user_id)
    return found
