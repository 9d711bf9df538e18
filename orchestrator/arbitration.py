"""Central arbitration on Postgres: the decision every send step and `/v1/arbitrate` asks for."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.experiments.assignments import GlobalControl
from orchestrator.metrics.journeys import measured_arbitration
from rules import store
from rules.decision import Decision, SendRequest
from rules.policy import Policy


class Arbitration:
    """Decides under a per-user lock with the user's current profile and contact history."""

    def __init__(
        self,
        engine: AsyncEngine,
        policy: Policy,
        *,
        default_timezone: str,
        global_control: GlobalControl | None = None,
    ) -> None:
        self.engine, self.policy, self.default_timezone = engine, policy, default_timezone
        self.global_control = global_control

    @measured_arbitration
    async def arbitrate(self, request: SendRequest, *, now: datetime) -> Decision:
        """Decide for the user the request names, or for the one they were merged into
        (a journey step that began before an identify): caps count both ids' contacts.

        Four round trips: begin; lock the user(s) and load their state in one call
        (`arbitration_state`, migration 0023); record the decision; commit. This runs
        for every message, so it goes straight to the driver."""
        held_out = self.global_control.holds if self.global_control is not None else None
        async with self.engine.connect() as conn:
            driver = await store.driver_connection(conn)
            async with driver.transaction():
                return await store.lock_and_arbitrate(
                    driver, request, policy=self.policy, now=now,
                    default_timezone=self.default_timezone, held_out=held_out,
                )  # fmt: skip

    async def withdraw(self, key: str) -> None:
        async with self.engine.begin() as conn:
            await store.withdraw(conn, key)


class MessageFields(BaseModel):
    """What a send request says about its message, as API callers and traffic files give it."""

    model_config = ConfigDict(extra="forbid")

    channels: list[Literal["email", "push", "in_app", "web"]] = Field(
        min_length=1, description="In fallback order"
    )
    category: Literal["promotional", "transactional", "service"]
    priority: int = Field(default=50, ge=0, le=100)
    # Strict: `true` is not a number (lax pydantic would read it as 1.0).
    value: float | None = Field(
        default=None, ge=0, le=1e9, strict=True, description="Expected value of the message"
    )
    propensity: float | None = Field(default=None, ge=0, le=1, strict=True)
    tags: list[str] = Field(default_factory=list)
    template: str | None = None
    content_key: str | None = Field(default=None, description="For cross-channel de-duplication")

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: list[str]) -> list[str]:
        if len(set(channels)) != len(channels):
            raise ValueError("a channel is listed twice")
        return channels

    def send_request(
        self, *, key: str, user_id: str, source: str | None, at: datetime
    ) -> SendRequest:
        return SendRequest(
            key=key,
            user_id=user_id,
            channels=tuple(self.channels),
            category=self.category,
            priority=self.priority,
            requested_at=at,
            value=self.value,
            propensity=self.propensity,
            tags=tuple(self.tags),
            journey=source,
            template=self.template,
            content_key=self.content_key,
        )


def scoped_key(caller: str, user_id: str, key: str) -> str:
    """Idempotency keys belong to one caller and one user: another caller's key, or the
    same key for another user, is a different request (and says nothing about this one).
    The user id's length keeps `a:b` + `c` apart from `a` + `b:c`."""
    return f"api:{caller}:{len(user_id)}:{user_id}:{key}"


def shown_key(stored: str) -> str:
    """The key as its caller gave it (journeys' keys are shown as they are)."""
    if not stored.startswith("api:"):
        return stored
    _, _, rest = stored.partition(":")
    _caller, _, rest = rest.partition(":")
    length, _, rest = rest.partition(":")
    return rest[int(length) + 1 :] if length.isdigit() else stored
