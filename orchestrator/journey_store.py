"""Postgres behind the journey activities: profiles, progress, journey versions, messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.base import Receipt, Rendered
from orchestrator.profiles import load_traits, merge_traits
from orchestrator.tables import enrollment_steps, enrollments, journey_versions, messages
from rules import store as arbitration_store
from workflows.activities import MessageRecord
from workflows.messages import DeployedJourney, ProgressInput, SendInput


class PostgresJourneyStore:
    """The `JourneyStore` the worker uses."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load_profile(self, user_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return await load_traits(conn, user_id)

    async def update_traits(
        self, user_id: str, *, set: Mapping[str, Any], unset: Sequence[str]
    ) -> None:
        async with self.engine.begin() as conn:
            await merge_traits(conn, user_id, set=set, unset=unset)

    async def record_progress(self, progress: ProgressInput) -> None:
        async with self.engine.begin() as conn:
            if progress.visits:
                stmt = insert(enrollment_steps).values(
                    [
                        {
                            "enrollment_id": progress.enrollment_id,
                            "step": v.step,
                            "kind": v.kind,
                            "visit": v.visit,
                            "outcome": v.outcome,
                            "at": v.at,
                        }
                        for v in progress.visits
                    ]
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        constraint="enrollment_steps_visit_key",
                        set_={
                            "outcome": func.coalesce(
                                stmt.excluded.outcome, enrollment_steps.c.outcome
                            )
                        },
                    )
                )
            values: dict[str, Any] = {"current_step": progress.current_step}
            if progress.status is not None:
                values |= {
                    "status": progress.status,
                    "end_reason": progress.end_reason,
                    "ended_at": progress.ended_at,
                }
            if progress.converted_at is not None:
                values["converted_at"] = func.coalesce(
                    enrollments.c.converted_at, progress.converted_at
                )
            await conn.execute(
                update(enrollments)
                .where(enrollments.c.id == progress.enrollment_id)
                .values(**values)
            )

    async def load_version(self, journey_key: str, version: int) -> DeployedJourney:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(journey_versions.c.spec, journey_versions.c.templates).where(
                        journey_versions.c.journey_key == journey_key,
                        journey_versions.c.version == version,
                    )
                )
            ).one()
        return DeployedJourney.model_validate(
            {"key": journey_key, "version": version, "spec": row.spec, "templates": row.templates}
        )

    async def find_message(self, message_id: str) -> MessageRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        messages.c.status,
                        messages.c.channel,
                        messages.c.status_code,
                        messages.c.error,
                        messages.c.content,
                    ).where(messages.c.id == message_id)
                )
            ).one_or_none()
        if row is None:
            return None
        return MessageRecord(row.status, row.channel, row.status_code, row.error, row.content)

    async def claim_message(self, request: SendInput, rendered: Rendered) -> None:
        stmt = insert(messages).values(
            id=request.message_id,
            enrollment_id=request.enrollment_id,
            journey_key=request.journey_key,
            version=request.version,
            user_id=request.user_id,
            step=request.step,
            channel=rendered.channel,
            template=request.template_name,
            category=request.category,
            status="sending",
            content=rendered.content,
            content_source=rendered.content_source,
            attempts=1,
            value=request.value,
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[messages.c.id],
                    set_={"attempts": messages.c.attempts + 1},
                )
            )

    async def mark_sent(self, message_id: str, receipt: Receipt) -> None:
        c = messages.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(c.id == message_id)
                .values(
                    # A receipt may already have arrived and moved the status on.
                    status=case((c.status == "sending", "sent"), else_=c.status),
                    status_code=receipt.status_code,
                    sent_at=receipt.accepted_at,
                    provider_message_id=receipt.provider_message_id,
                    error=None,
                )
            )

    async def mark_failed(
        self, message_id: str, *, error: str, status_code: int | None, final: bool
    ) -> None:
        values: dict[str, Any] = {"error": error[:2000], "status_code": status_code}
        if final:
            values["status"] = "failed"
        async with self.engine.begin() as conn:
            await conn.execute(update(messages).where(messages.c.id == message_id).values(values))
            if final:
                await arbitration_store.release(conn, message_id)
