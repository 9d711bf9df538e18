"""`POST /v1/arbitrate` for channel systems outside journeys, and the decision log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from orchestrator.api.auth import SourceDep
from orchestrator.api.deps import ServicesDep
from orchestrator.arbitration import MessageFields
from rules import store
from rules.decision import Decision

router = APIRouter(tags=["arbitration"])


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
        401: {"description": "Unknown or missing write key"},
        409: {"description": "The idempotency key was used for a different message"},
    },
)
async def arbitrate(
    body: ArbitrateBody, services: ServicesDep, _source: SourceDep
) -> dict[str, Any]:
    """Send now on a channel, defer until a time, or suppress, with every check's reason.

    A deferred message asks again at `until` with the same idempotency key.
    """
    configured = set(services.config.channels)
    unknown = [c for c in body.channels if c not in configured]
    if unknown:
        raise HTTPException(
            400, {"error": f"channel {unknown[0]} is not configured", "field": "channels"}
        )
    now = services.clock()
    request = body.send_request(
        key=body.idempotency_key, user_id=body.user_id, source=body.source, at=now
    )
    try:
        decision = await services.arbitration.arbitrate(request, now=now)
    except store.IdempotencyConflict as exc:
        raise HTTPException(409, {"error": str(exc), "field": "idempotency_key"}) from None
    return _out(decision)


@router.get("/v1/users/{user_id}/decisions", response_model=list[LoggedDecision])
async def decisions(
    user_id: str, services: ServicesDep, journey: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Why a user did or did not get each message: every decision, newest first."""
    async with services.engine.connect() as conn:
        rows = await store.decisions_for(conn, user_id, journey=journey, limit=min(limit, 1000))
    return [
        {
            "key": r["key"],
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
