"""`POST /v1/rank`: ranked items for external callers, with the channels' fallbacks; the
built-in model's versions, their cards, and how ranked content does online."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field

from channels.ranking import Recommendations
from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.profiles import load_traits
from orchestrator.ranking import cards, monitoring
from orchestrator.ranking.fairness import GroupingError
from orchestrator.ranking.versions import versions
from rules.durations import DurationError, parse_duration

router = APIRouter(tags=["ranking"], route_class=GuardedRoute)


class RankBody(Recommendations):
    """What should this user see in this slot?"""

    user_id: str = Field(min_length=1, max_length=200)
    k: int = Field(default=10, ge=1, le=50)
    context: dict[str, Any] = Field(default_factory=dict, description="e.g. the page or event")


class RankAnswer(BaseModel):
    items: list[dict[str, Any]] = Field(description="Catalogue items, best first")
    source: Literal["model", "baseline"]
    reason: str
    model: str | None
    confidence: float | None


@router.post(
    "/v1/rank",
    response_model=RankAnswer,
    responses={
        400: {"description": "The request is invalid; `field` names the problem"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `ranking`"},
    },
)
async def rank(
    body: RankBody,
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("ranking"))],
) -> RankAnswer:
    """The same answer a message would get: the model within its deadline, else the
    popularity baseline (timeout, error, low confidence, or a user who opted out)."""
    async with services.engine.connect() as conn:
        traits = await load_traits(conn, body.user_id)
    wanted = Recommendations(slot=body.slot, k=body.k, exclude_purchased=body.exclude_purchased)
    filled = await services.recommender.recommend(
        body.user_id, traits, wanted, context=body.context
    )
    await record_use(services, caller, "users.rank", body.user_id)
    return RankAnswer(
        items=filled.items,
        source=filled.source,
        reason=filled.reason,
        model=filled.model,
        confidence=filled.confidence,
    )


_READS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The request is invalid; `field` names the problem"},
    401: {"description": "No credential, or an unknown one"},
    403: {"description": "Not a server API key with scope `ranking`"},
}


class VersionSummary(BaseModel):
    version: int
    status: str = Field(description="active, canary, inactive or rejected")
    created_at: datetime
    source: str
    window_start: datetime
    window_end: datetime
    purchases: int
    reason: str


@router.get(
    "/v1/ranking/versions",
    response_model=list[VersionSummary],
    responses=_READS,
)
async def list_versions(
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("ranking"))],
) -> list[dict[str, Any]]:
    """Every trained version of the built-in model, oldest first."""
    async with services.engine.connect() as conn:
        return await versions(conn)


@router.get(
    "/v1/ranking/versions/{version}",
    responses={**_READS, 404: {"description": "No such version"}},
)
async def show_version(
    version: Annotated[int, Path(ge=1, le=2**31 - 1, description="A version number")],
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("ranking"))],
) -> dict[str, Any]:
    """A version's model card: training window and data, features and parameters,
    offline metrics overall and by group, the gate, canary or degraded state, and
    every activation, canary, promotion and rollback with who and when."""
    async with services.engine.connect() as conn:
        found = await cards.card(conn, version)
    if found is None:
        raise HTTPException(404, f"there is no version {version}")
    return dict(found)


@router.get(
    "/v1/ranking/monitor",
    responses=_READS,
)
async def monitor(
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("ranking"))],
    since: Annotated[str, Query(description="How far back, e.g. 1d or 7d")] = "1d",
    by: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Also by this trait")
    ] = None,
) -> dict[str, Any]:
    """Ranked content online: per version, slot and channel, clicks and conversions on
    recommended items per message with intervals, the baseline's fallbacks by why, the
    active version's offline figures, and a running canary against the active version."""
    try:
        window = parse_duration(since)
    except DurationError as exc:
        raise HTTPException(400, {"error": str(exc), "field": "since"}) from None
    if window > monitoring.LONGEST:
        raise HTTPException(400, {"error": f"at most {monitoring.LONGEST.days}d", "field": "since"})
    ranking = services.config.ranking
    try:
        async with services.engine.connect() as conn:
            found = await monitoring.report(
                conn, ranking, since=window, now=services.clock(), by=by
            )
    except GroupingError as exc:
        raise HTTPException(400, {"error": f"by {by}: {exc}", "field": "by"}) from None
    return dict(jsonable_encoder(found))
