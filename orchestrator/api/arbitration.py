"""`POST /v1/arbitrate` for channel systems outside journeys, and the decision log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.arbitration import MessageFields, scoped_key, shown_key
from rules import store
from rules.decision import Decision

router = APIRouter(tags=["arbitration"], route_class=GuardedRoute)


class ArbitrateBody(MessageFields):
    """A message an external system wants to send; ask before sending it."""

    user_id: str = Field(min_length=1, max_length=200)
    idempotency_key: str = Field(
        min_length=1, max_length=200, description="Asking again with it returns the same answer"
    )
    source: str | None = Field(default=None, max_length=100, description="Who asks, for the log")


class CheckOut(BaseModel):
    rule: str
    passed: bool
    detail: str


class DecisionOut(BaseModel):
    action: Literal["send", "defer", "suppress"]
    channel: str | None
    until: datetime | None
    score: float
    reason: str
    checks: list[CheckOut]


class LoggedDecision(DecisionOut):
    key: str
    journey: str | None
    decided_at: datetime


def _out(decision: Decision) -> dict[str, Any]:
    return {
        "action": decision.action,
        "channel": decision.channel,
        "until": decision.until,
        "score": decision.score,
        "reason": decision.reason,
        "checks": [
            {"rule": c.rule, "passed": c.passed, "detail": c.detail} for c in decision.checks
        ],
    }


@router.post(
    "/v1/arbitrate",
    response_model=DecisionOut,
    responses={
        400: {"description": "The request is invalid; `field` names the problem"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `arbitrate`"},
        409: {"description": "This caller used the key for another message to this user"},
    },
)
async def arbitrate(
    body: ArbitrateBody,
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("arbitrate"))],
) -> dict[str, Any]:
    """Send now on a channel, defer until a time, or suppress, with every check's reason.

    A deferred message asks again at `until` with the same idempotency key. Keys are
    the caller's own, per user.
    """
    configured = set(services.config.channels)
    unknown = [c for c in body.channels if c not in configured]
    if unknown:
        raise HTTPException(
            400, {"error": f"channel {unknown[0]} is not configured", "field": "channels"}
        )
    now = services.clock()
    key = scoped_key(caller.name, body.user_id, body.idempotency_key)
    # Named for the log and for other requests' "lost to ...": the caller, never its key.
    source = body.source or f"api:{caller.name}"
    request = body.send_request(key=key, user_id=body.user_id, source=source, at=now)
    try:
        decision = await services.arbitration.arbitrate(request, now=now)
    except store.IdempotencyConflict:
        message = (
            f"idempotency key {body.idempotency_key!r} was used for a different message "
            "to this user"
        )
        raise HTTPException(409, {"error": message, "field": "idempotency_key"}) from None
    return _out(decision)


@router.get(
    "/v1/users/{user_id}/decisions",
    response_model=list[LoggedDecision],
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `users:read`"},
    },
)
async def decisions(
    services: ServicesDep,
    caller: Annotated[Caller, Depends(server_key_with("users:read"))],
    user_id: str = Path(min_length=1, max_length=200),
    journey: str | None = Query(default=None, min_length=1, max_length=200),
    limit: int = Query(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Why a user did or did not get each message: every decision, newest first."""
    async with services.engine.connect() as conn:
        rows = await store.decisions_for(conn, user_id, journey=journey, limit=limit)
    await record_use(services, caller, "users.decisions.read", user_id)
    return [
        {
            "key": shown_key(r["key"]),
            "journey": r["journey"],
            "decided_at": r["decided_at"],
            "action": r["action"],
            "channel": r["channel"],
            "until": r["until"],
            "score": r["score"],
            "reason": r["reason"],
            "checks": r["checks"],
        }
        for r in rows
    ]
