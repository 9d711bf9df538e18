"""`POST /v1/arbitrate` for channel systems outside journeys, and the decision log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.api.auth import SourceDep
from orchestrator.api.deps import ServicesDep
from rules import store
from rules.decision import Decision, SendRequest

router = APIRouter(tags=["arbitration"])

ChannelName = Literal["email", "push", "in_app", "web"]


class ArbitrateBody(BaseModel):
    """A message an external system wants to send; ask before sending it."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=200)
    idempotency_key: str = Field(
        min_length=1, max_length=200, description="Asking again with it returns the same answer"
    )
    channels: list[ChannelName] = Field(min_length=1, description="In fallback order")
    category: Literal["promotional", "transactional", "service"]
    priority: int = Field(default=50, ge=0, le=100)
    value: float | None = Field(default=None, ge=0, description="Expected value of the message")
    propensity: float | None = Field(default=None, ge=0, le=1)
    tags: list[str] = Field(default_factory=list)
    source: str | None = Field(default=None, max_length=100, description="Who asks, for the log")
    template: str | None = None
    content_key: str | None = Field(default=None, description="For cross-channel de-duplication")

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: list[str]) -> list[str]:
        if len(set(channels)) != len(channels):
            raise ValueError("a channel is listed twice")
        return channels


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
    request = SendRequest(
        key=body.idempotency_key,
        user_id=body.user_id,
        channels=tuple(body.channels),
        category=body.category,
        priority=body.priority,
        requested_at=now,
        value=body.value,
        propensity=body.propensity,
        tags=tuple(body.tags),
        journey=body.source,
        template=body.template,
        content_key=body.content_key,
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
