"""Erasure as a durable workflow: `UserErasure`, one per erased id, id `erase:<hash>`.

    begin       the ids to erase: the user id and every anonymous id or alias that
                `identities` links to it, all put on the suppression list (from then on
                ingestion drops their events)
    workflows   every Temporal execution of theirs (by the `UserId` search attribute and
                by their enrollments' workflow ids) deleted: a running one is terminated
                first by the server, and its history goes with it
    rows        every row naming them, deleted in batches in foreign-key order (`rows`);
                the step and its counts are heartbeat details, so a retry after a worker
                dies resumes at the step it was in
    settle      a pause, then workflows and rows once more: a journey activity already in
                flight when its workflow was deleted may still write a row
    finish      the ids are forgotten (only their keyed hashes stay, on the list), and
                the audit log records that the erasure is done

Temporal never sees a user id: the workflow's input, results and activity arguments
carry only the keyed hash, and activities read the ids from the `erasures` row, which
holds them only until the erasure finishes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity, workflow
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from sqlalchemy import func, select, text, update
    from sqlalchemy.dialects.postgresql import insert
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    from orchestrator.access import audit
    from orchestrator.enrollment import workflow_of
    from orchestrator.tables import enrollments, erasures
    from orchestrator.temporal import segments_queue
    from orchestrator.users import erased, rows
    from orchestrator.users.identity import every_id, refuse_merged
    from workflows import search

BATCH = 2_000  # rows per statement
QUERY_IDS = 50  # ids per visibility query
HEARTBEAT = timedelta(seconds=10)
SETTLE = timedelta(seconds=5)
_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


# Rows a batch deleted, added to the erasure's counts in the batch's own transaction.
_COUNT = text(
    "UPDATE erasures SET counts = counts || jsonb_build_object(CAST(:name AS text), "
    "coalesce((counts ->> CAST(:name AS text))::bigint, 0) + :n) WHERE hash = :hash"
)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErasureInput(_Message):
    hash: str
    settle: timedelta = SETTLE


class RowsResult(_Message):
    counts: dict[str, int]


class ErasureResult(_Message):
    hash: str
    workflows: int  # Temporal executions deleted
    counts: dict[str, int]  # rows deleted (audit entries rewritten) per table


def workflow_id(hashed: str) -> str:
    return f"erase:{hashed}"


@workflow.defn(name="UserErasure")
class UserErasure:
    @workflow.run
    async def run(self, input: ErasureInput) -> ErasureResult:
        options: dict[str, Any] = {
            "start_to_close_timeout": timedelta(minutes=30),
            "heartbeat_timeout": HEARTBEAT,
            "retry_policy": _RETRY,
        }
        await workflow.execute_activity("erasure_begin", input.hash, **options)
        deleted: int = await workflow.execute_activity(
            "erasure_workflows", input.hash, result_type=int, **options
        )
        await workflow.execute_activity(
            "erasure_rows", input.hash, result_type=RowsResult, **options
        )
        await workflow.sleep(input.settle)
        deleted += await workflow.execute_activity(
            "erasure_workflows", input.hash, result_type=int, **options
        )
        done = await workflow.execute_activity(
            "erasure_rows", input.hash, result_type=RowsResult, **options
        )
        result = ErasureResult(hash=input.hash, workflows=deleted, counts=done.counts)
        await workflow.execute_activity("erasure_finish", result, **options)
        return result


class ErasureActivities:
    def __init__(self, *, engine: AsyncEngine, client: Client, batch: int = BATCH) -> None:
        self.engine, self.client, self.batch = engine, client, batch
        self.erased = erased.ErasedIds(engine)

    def all(self) -> list[object]:
        return [self.begin, self.delete_workflows, self.delete_rows, self.finish]

    @activity.defn(name="erasure_begin")
    async def begin(self, hashed: str) -> None:
        key = await self.erased.key()
        async with self.engine.begin() as conn:
            row = await _locked(conn, hashed)
            # The user the id names (or was merged into), and every id merged into them.
            ids = sorted({row.user_id, *row.ids, *await every_id(conn, row.user_id)})
            await erased.list_ids(conn, key=key, erasure=hashed, ids=ids, now=_now())
            await conn.execute(
                update(erasures)
                .where(erasures.c.hash == hashed)
                .values(
                    ids=ids,
                    status="erasing",
                    # A new erasure (not a retried begin) counts from nothing.
                    **(
                        {"started_at": func.now(), "finished_at": None, "counts": {}}
                        if row.status == "requested"
                        else {}
                    ),
                )
            )

    @activity.defn(name="erasure_workflows")
    async def delete_workflows(self, hashed: str) -> int:
        ids = await self._ids(hashed)
        found: set[tuple[str, str]] = set()
        # Visibility queries quote values; ids with quotes are found by enrollment alone.
        quotable = [i for i in ids if not any(c in i for c in "'\"\\")]
        for start in range(0, len(quotable), QUERY_IDS):
            chunk = quotable[start : start + QUERY_IDS]
            query = f"{search.USER_ID.name} IN ({', '.join(repr(i) for i in chunk)})"
            async for execution in self.client.list_workflows(query):
                activity.heartbeat()
                found.add((execution.id, execution.run_id or ""))
        async with self.engine.connect() as conn:
            enrolled = await conn.execute(
                select(
                    enrollments.c.journey_key, enrollments.c.user_id, enrollments.c.instance,
                    enrollments.c.workflow_id,
                ).where(enrollments.c.user_id.in_(ids))
            )  # fmt: skip
            by_enrollment = {workflow_of(row) for row in enrolled}
        listed = {wid for wid, _ in found}
        found |= {(wid, "") for wid in by_enrollment - listed}
        deleted = 0
        for wid, run_id in sorted(found):
            activity.heartbeat()
            try:
                await self.client.workflow_service.delete_workflow_execution(
                    DeleteWorkflowExecutionRequest(
                        namespace=self.client.namespace,
                        workflow_execution=WorkflowExecution(workflow_id=wid, run_id=run_id),
                    )
                )
                deleted += 1
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
        return deleted

    @activity.defn(name="erasure_rows")
    async def delete_rows(self, hashed: str) -> RowsResult:
        """Every step, batch by batch. Each batch adds its count to the erasure's row in
        its own transaction, so the counts stay exact across retries; a retry starts at
        the step its last heartbeat reported (the steps before it would find nothing)."""
        ids = await self._ids(hashed)
        alias = erased.subject(hashed)
        details = activity.info().heartbeat_details
        for index in range(int(details[0]) if details else 0, len(rows.STEPS)):
            step = rows.STEPS[index]
            while True:
                async with self.engine.begin() as conn:
                    changed = await rows.run_step(
                        conn, step, ids=ids, alias=alias, batch=self.batch
                    )
                    if changed:
                        await conn.execute(_COUNT, {"hash": hashed, "name": step.name,
                                                    "n": changed})  # fmt: skip
                activity.heartbeat(index)
                if changed < self.batch:
                    break
        async with self.engine.connect() as conn:
            counts = await conn.scalar(select(erasures.c.counts).where(erasures.c.hash == hashed))
        counts = counts or {}
        return RowsResult(counts={name: int(counts.get(name, 0)) for name in rows.STEP_NAMES})

    @activity.defn(name="erasure_finish")
    async def finish(self, result: ErasureResult) -> None:
        hashed = result.hash
        now = _now()
        async with self.engine.begin() as conn:
            row = await _locked(conn, hashed)
            await conn.execute(
                update(erasures)
                .where(erasures.c.hash == hashed)
                .values(
                    status="erased",
                    user_id=None,
                    ids=[],
                    finished_at=now,
                    counts={**result.counts, "temporal_workflows": result.workflows},
                )
            )
            await audit.record(
                conn,
                requester(row.requested_by),
                "user.erased",
                subject=erased.subject(hashed),
                details={**result.counts, "temporal_workflows": result.workflows},
                now=now,
            )

    async def _ids(self, hashed: str) -> list[str]:
        async with self.engine.connect() as conn:
            row = await _locked(conn, hashed, lock=False)
        return sorted({row.user_id, *row.ids})


async def _locked(conn: AsyncConnection, hashed: str, *, lock: bool = True) -> Any:
    query = select(erasures).where(erasures.c.hash == hashed)
    row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
    if row is None or row.user_id is None:
        raise ApplicationError(
            "no erasure is pending under this hash (finished, or never requested)",
            non_retryable=True,
        )
    return row


def _now() -> datetime:
    return datetime.now(UTC)


def requester(requested_by: str) -> audit.Actor:
    """The actor stored as `kind:name` with the request."""
    kind, _, name = requested_by.partition(":")
    assert kind in ("server_key", "user_token", "write_key", "cli")
    return audit.Actor(kind, name)  # type: ignore[arg-type]


async def request_erasure(
    *,
    engine: AsyncEngine,
    client: Client,
    erased_ids: erased.ErasedIds,
    user_id: str,
    actor: audit.Actor,
    task_queue: str,
    now: datetime,
) -> str:
    """Record the request, list the id at once, audit it and start (or find) the
    erasure's workflow; returns the hash that names it. Asking again is harmless."""
    hashed = await erased_ids.hash(user_id)
    key = await erased_ids.key()
    async with engine.begin() as conn:
        await refuse_merged(conn, user_id)
        stmt = insert(erasures).values(
            hash=hashed,
            status="requested",
            user_id=user_id,
            requested_at=now,
            requested_by=f"{actor.kind}:{actor.name}",
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[erasures.c.hash],
                # A running erasure keeps its state; a finished or restored one runs again.
                set_={
                    "user_id": user_id,
                    "requested_at": now,
                    "requested_by": stmt.excluded.requested_by,
                    "status": func.coalesce(
                        func.nullif(func.nullif(erasures.c.status, "erased"), "restored"),
                        "requested",
                    ),
                    "restored_at": None,
                },
            )
        )
        await erased.list_ids(conn, key=key, erasure=hashed, ids=[user_id], now=now)
        await audit.record(conn, actor, "user.erase", subject=erased.subject(hashed), now=now)
    await client.start_workflow(
        UserErasure.run,
        ErasureInput(hash=hashed),
        id=workflow_id(hashed),
        task_queue=segments_queue(task_queue),
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary="erase one user's data everywhere (the id is kept only as a hash)",
    )
    return hashed


class Erased(Exception):
    """The user was erased (or is being erased): nothing is held about them, and naming
    them again (an export's audit entry, say) would undo part of the erasure."""


async def refuse_erased(conn: AsyncConnection, erased_ids: erased.ErasedIds, user_id: str) -> None:
    found = await status(conn, await erased_ids.hash(user_id))
    if found is not None and found["status"] != "restored":
        raise Erased(
            f"the user was erased ({found['status']}): nothing is held about them; "
            "`users status` shows the erasure"
        )


async def status(conn: AsyncConnection, hashed: str) -> dict[str, Any] | None:
    """The erasure's state, without the ids it covers."""
    row = (
        await conn.execute(
            select(
                erasures.c.status,
                erasures.c.requested_at,
                erasures.c.started_at,
                erasures.c.finished_at,
                erasures.c.restored_at,
                erasures.c.counts,
            ).where(erasures.c.hash == hashed)
        )
    ).one_or_none()
    if row is None:
        return None
    return {"workflow_id": workflow_id(hashed), **row._mapping}
