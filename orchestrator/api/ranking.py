"""`POST /v1/rank`: ranked items for external callers, with the channels' fallbacks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from channels.ranking import Recommendations
from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.profiles import load_traits

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
