"""Central arbitration on Postgres: the decision every send step and `/v1/arbitrate` asks for."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.tables import profiles
from rules import store
from rules.decision import Decision, SendRequest
from rules.policy import Policy


class Arbitration:
    """Decides under a per-user lock with the user's current profile and contact history."""

    def __init__(self, engine: AsyncEngine, policy: Policy, *, default_timezone: str) -> None:
        self.engine, self.policy, self.default_timezone = engine, policy, default_timezone

    async def arbitrate(self, request: SendRequest, *, now: datetime) -> Decision:
        profile = select(profiles.c.traits).where(profiles.c.user_id == request.user_id)
        async with self.engine.begin() as conn:
            traits = await store.lock_user(conn, request.user_id, also=profile.scalar_subquery())
            return await store.arbitrate(
                conn, request, traits=traits or {}, policy=self.policy, now=now,
                default_timezone=self.default_timezone,
            )  # fmt: skip
