"""Postgres behind the journey activities: profiles, progress, journey versions, messages."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from channels.base import Receipt, Rendered
from orchestrator.experiments import assignments
from orchestrator.experiments.assignments import thompson_propensities
from orchestrator.metrics.journeys import count_end
from orchestrator.profiles import WHOLE_PROFILE_SQL, merge_traits
from orchestrator.segments.keeper import touch
from orchestrator.tables import enrollment_steps, enrollments, journey_versions, messages
from rules import store as arbitration_store
from rules.store import driver_connection
from workflows.activities import MessageRecord
from workflows.assignment import bucket, thompson
from workflows.messages import (
    VARIANT_OUTCOME,
    ChooseVariantInput,
    DeployedJourney,
    ProgressInput,
    SendInput,
    StepVisit,
)

_LOAD_TRAITS = "SELECT " + WHOLE_PROFILE_SQL.format(n=1)
_PREPARE_SEND = f"""
    SELECT m.status, m.channel, m.status_code, m.error, m.content,
           {WHOLE_PROFILE_SQL.format(n=2)} AS traits
    FROM (SELECT 1) AS one
    LEFT JOIN messages AS m ON m.id = $1
"""
_CLAIM_MESSAGE = """
    INSERT INTO messages (id, enrollment_id, journey_key, version, user_id, step, channel,
        template, category, status, content, content_source, attempts, value)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'sending', CAST($10 AS jsonb),
        CAST($11 AS jsonb), 1, $12)
    ON CONFLICT (id) DO UPDATE SET attempts = messages.attempts + 1
"""
# A receipt may already have arrived and moved the status on from 'sending'.
_MARK_SENT = """
    UPDATE messages SET status = CASE WHEN status = 'sending' THEN 'sent' ELSE status END,
        status_code = $2, sent_at = $3, provider_message_id = $4, error = NULL
    WHERE id = $1
"""


_ASSIGNED = text(
    "SELECT arm FROM assignments"
    " WHERE journey_key = :j AND kind = :kind AND experiment_key = :k AND user_id = :u"
)
_STATS = """
    SELECT a.arm, count(*) AS tried, count(*) FILTER (WHERE {success}) AS won
    FROM assignments AS a JOIN enrollments AS e ON e.id = a.enrollment_id
    WHERE a.journey_key = :j AND a.kind = :kind AND a.experiment_key = :k
    GROUP BY a.arm
"""
# A fixed split's arm, from the experiment step as recorded, with its configured weight.
_SPLITS = text(
    """
    SELECT e.journey_key, e.version, e.user_id, v.spec -> 'steps' AS steps
    FROM enrollments AS e
    JOIN journey_versions AS v ON v.journey_key = e.journey_key AND v.version = e.version
    WHERE e.id = :e
    """
)
# What counts as a success of a bandit variant, for each kind of reward.
_SUCCESS = {
    "goal": "e.converted_at IS NOT NULL",
    "click": "EXISTS (SELECT 1 FROM messages AS m WHERE m.enrollment_id = e.id"
    " AND m.clicked_at IS NOT NULL)",
    "click_on_variant": "EXISTS (SELECT 1 FROM messages AS m WHERE m.enrollment_id = e.id"
    " AND m.template = a.arm AND m.clicked_at IS NOT NULL)",
}


class PostgresJourneyStore:
    """The `JourneyStore` the worker uses."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load_profile(self, user_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            driver = await driver_connection(conn)
            traits = await driver.fetchval(_LOAD_TRAITS, user_id)
        return dict(_json(traits) or {})

    async def update_traits(
        self, user_id: str, *, set: Mapping[str, Any], unset: Sequence[str]
    ) -> None:
        async with self.engine.begin() as conn:
            await merge_traits(conn, user_id, set=set, unset=unset)
            # Segments over these traits follow at the upkeep's next round.
            await touch(conn, user_id, datetime.now(UTC))

    async def record_progress(self, progress: ProgressInput) -> None:
        async with self.engine.begin() as conn:
            await self._record_splits(conn, progress.enrollment_id, progress.visits)
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
            if progress.version is not None:  # moved onto a newer version
                values["version"] = progress.version
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
            ended = await conn.execute(
                update(enrollments)
                .where(enrollments.c.id == progress.enrollment_id)
                .values(**values)
                .returning(enrollments.c.journey_key, _STATUS_BEFORE)
            )
            if progress.status is not None and (row := ended.first()) and row[1] == "active":
                count_end(row.journey_key, progress.status)

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

    # The four statements below run for every message: straight to the driver, one round
    # trip each outside a transaction (each is one atomic statement), which more than
    # halves a worker's CPU per message compared with SQLAlchemy Core in transactions.

    async def prepare_send(
        self, message_id: str, user_id: str
    ) -> tuple[MessageRecord | None, dict[str, Any]]:
        async with self.engine.connect() as conn:
            driver = await driver_connection(conn)
            row = await driver.fetchrow(_PREPARE_SEND, message_id, user_id)
        traits = dict(_json(row["traits"]) or {})
        if row["status"] is None:
            return None, traits
        prior = MessageRecord(
            row["status"], row["channel"], row["status_code"], row["error"], _json(row["content"])
        )
        return prior, traits

    async def claim_message(self, request: SendInput, rendered: Rendered) -> None:
        source = rendered.content_source
        async with self.engine.connect() as conn:
            driver = await driver_connection(conn)
            await driver.execute(
                _CLAIM_MESSAGE,
                request.message_id,
                request.enrollment_id,
                request.journey_key,
                request.version,
                request.user_id,
                request.step,
                rendered.channel,
                request.template_name,
                request.category,
                orjson.dumps(rendered.content).decode(),
                orjson.dumps(source).decode() if source is not None else None,
                request.value,
            )

    async def mark_sent(self, message_id: str, receipt: Receipt) -> None:
        async with self.engine.connect() as conn:
            driver = await driver_connection(conn)
            await driver.execute(
                _MARK_SENT,
                message_id,
                receipt.status_code,
                receipt.accepted_at,
                receipt.provider_message_id,
            )

    async def choose_variant(self, choice: ChooseVariantInput) -> str:
        key = {"j": choice.journey_key, "kind": choice.kind, "k": choice.experiment_key,
               "u": choice.user_id}  # fmt: skip
        async with self.engine.begin() as conn:
            given = await conn.scalar(_ASSIGNED, key)
            if given in choice.variants:
                return str(given)
            query = text(_STATS.format(success=_SUCCESS[choice.reward]))
            rows = (await conn.execute(query, key)).all()
            counts = {arm: (int(tried), int(won)) for arm, tried, won in rows}
            stats = [counts.get(v, (0, 0)) for v in choice.variants]
            # Seeded by who and when (the trials so far), so a draw can be reproduced.
            seed = bucket(choice.experiment_key, choice.user_id, str(sum(t for t, _ in stats)))
            pick = thompson(stats, min_share=choice.min_share, rng=random.Random(seed))
            chances = thompson_propensities(stats, min_share=choice.min_share, seed=seed)
            version = await conn.scalar(
                select(enrollments.c.version).where(enrollments.c.id == choice.enrollment_id)
            )
            await assignments.record(
                conn, journey_key=choice.journey_key, version=version, kind=choice.kind,
                experiment_key=choice.experiment_key, mode="bandit", user_id=choice.user_id,
                enrollment_id=choice.enrollment_id, arm=choice.variants[pick],
                propensity=chances[pick], at=datetime.now(UTC),
            )  # fmt: skip
        return choice.variants[pick]

    async def _record_splits(
        self, conn: AsyncConnection, enrollment_id: int, visits: Sequence[StepVisit]
    ) -> None:
        """A fixed split's assignment, with its weight, once its step is recorded (a
        bandit's was recorded when it drew; this one then changes nothing)."""
        chosen = [v for v in visits if v.kind == "experiment" and v.outcome]
        if not chosen:
            return
        row = (await conn.execute(_SPLITS, {"e": enrollment_id})).one_or_none()
        if row is None:
            return
        for visit in chosen:
            step = (row.steps or {}).get(visit.step, {}).get("experiment")
            arm = str(visit.outcome).removeprefix(VARIANT_OUTCOME)
            weights = {v["name"]: v["weight"] for v in (step or {}).get("variants", [])}
            if arm not in weights:
                continue
            await assignments.record(
                conn, journey_key=row.journey_key, version=row.version, kind="experiment",
                experiment_key=step["key"], mode="fixed", user_id=row.user_id,
                enrollment_id=enrollment_id, arm=arm,
                propensity=weights[arm] / sum(weights.values()), at=visit.at,
            )  # fmt: skip

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


# A sub-select in RETURNING reads the statement's snapshot: the row before the update,
# so a retried record_progress does not count the same end twice.
_BEFORE = enrollments.alias("before")
_STATUS_BEFORE = select(_BEFORE.c.status).where(_BEFORE.c.id == enrollments.c.id).scalar_subquery()


def _json(value: Any) -> Any:
    """asyncpg hands JSONB over as text unless a codec is set."""
    return orjson.loads(value) if isinstance(value, str) else value
