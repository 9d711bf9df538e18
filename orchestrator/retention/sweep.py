"""A retention run: each step of `kinds.STEPS` in turn, a page per transaction, with the
run's row (`retention_runs`) updated in the same transaction as each page. A run that
crashed is picked up again by its workflow id and goes on from its last page: nothing
is counted twice, nothing is skipped."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.retention.config import KINDS, RetentionConfig
from orchestrator.retention.kinds import STEPS, Step
from orchestrator.tables import retention_runs
from rules.policy import Policy

# Never queue behind another transaction's lock (a DDL, a long report): fail the page,
# and the activity's retry goes on from it.
LOCK_TIMEOUT = "2s"
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """What a run removes: rows older than each kind's cutoff, less what is kept."""

    now: datetime
    kinds: Mapping[str, datetime]
    contacts_since: datetime  # sends inside the longest cap window count towards caps
    peers_since: datetime  # requests whose conflict window may still hold a peer
    global_control: bool  # the workspace keeps a global control group

    @classmethod
    def at(
        cls, now: datetime, *, config: RetentionConfig, policy: Policy, global_control: bool
    ) -> Cutoffs:
        conflict = max(policy.conflicts.windows.values(), default=timedelta(0))
        return cls(
            now=now,
            kinds={kind: now - config.period(kind) for kind in KINDS},
            contacts_since=now - policy.longest_window,
            peers_since=now - conflict - policy.max_defer,
            global_control=global_control,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            **{kind: at.isoformat() for kind, at in self.kinds.items()},
            "contacts_since": self.contacts_since.isoformat(),
            "peers_since": self.peers_since.isoformat(),
            "global_control": self.global_control,
        }


@dataclass(slots=True)
class Run:
    id: int
    workflow_id: str
    dry_run: bool
    status: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)


async def open_run(
    engine: AsyncEngine, *, workflow_id: str, trigger: str, dry_run: bool, cutoffs: Cutoffs
) -> Run:
    """The run's row: made by its first attempt, found again by the next."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(retention_runs)
            .values(
                workflow_id=workflow_id,
                trigger=trigger,
                dry_run=dry_run,
                started_at=datetime.now(UTC),
                status="running",
                cutoffs=cutoffs.as_json(),
            )
            .on_conflict_do_nothing(index_elements=["workflow_id"])
        )
        row = (
            await conn.execute(
                select(retention_runs).where(retention_runs.c.workflow_id == workflow_id)
            )
        ).one()
    return Run(row.id, workflow_id, row.dry_run, row.status, dict(row.counts), dict(row.progress))


async def sweep(
    engine: AsyncEngine,
    run: Run,
    *,
    cutoffs: Cutoffs,
    batch: int,
    beat: Callable[[Run], None] = lambda run: None,
    steps: tuple[Step, ...] = STEPS,
) -> Run:
    """Go through every step (from where the run stopped); `beat` is called after each
    page, for the activity's heartbeat."""
    for step in steps:
        while not run.progress.get(step.name, {}).get("done"):
            await _page(engine, run, step, cutoffs, batch)
            beat(run)
    async with engine.begin() as conn:
        await conn.execute(
            update(retention_runs)
            .where(retention_runs.c.id == run.id)
            # A step's last key may name a user (an API caller's arbitration key): a
            # finished run forgets where it was.
            .values(status="finished", finished_at=datetime.now(UTC),
                    progress={name: {"done": True} for name in run.progress})
        )  # fmt: skip
    run.status = "finished"
    return run


async def _page(engine: AsyncEngine, run: Run, step: Step, cutoffs: Cutoffs, batch: int) -> None:
    place = run.progress.get(step.name) or {
        "at": _BEGINNING.isoformat(),
        "key": list(step.first_key),
    }
    params: dict[str, Any] = {
        "cutoff": cutoffs.kinds[step.kind],
        "now": cutoffs.now,
        "contacts_since": cutoffs.contacts_since,
        "peers_since": cutoffs.peers_since,
        "global_control": cutoffs.global_control,
        "limit": batch,
        "at": datetime.fromisoformat(place["at"]),
        **{f"c{i}": value for i, value in enumerate(place["key"])},
    }
    counts = dict(run.counts.get(step.name) or {"kept": 0})
    async with engine.begin() as conn:
        if not run.dry_run:
            await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        rows = (await conn.execute(_bound(step.scan_sql(lock=not run.dry_run), params))).all()
        doomed = [row for row in rows if not row.keep]
        keys = {f"k{i}": [row[1 + i] for row in doomed] for i in range(step.keys)}
        counts["kept"] += len(rows) - len(doomed)
        dry = dict(step.dry_counts)
        for name, statement in step.apply:
            if not doomed:
                changed = 0
            elif not run.dry_run:
                changed = (await conn.execute(text(statement), keys)).rowcount
            elif name in dry:
                changed = int(await conn.scalar(text(dry[name]), keys) or 0)
            else:
                changed = len(doomed)
            counts[name] = counts.get(name, 0) + changed
        last = rows[-1] if rows else None
        progress = {
            "at": last.at.isoformat() if last else place["at"],
            "key": [last[1 + i] for i in range(step.keys)] if last else place["key"],
            "done": len(rows) < batch,
        }
        await conn.execute(
            update(retention_runs)
            .where(retention_runs.c.id == run.id)
            .values(
                counts={**run.counts, step.name: counts},
                progress={**run.progress, step.name: progress},
            )
        )
    run.counts[step.name] = counts
    run.progress[step.name] = progress


def _bound(sql: str, params: Mapping[str, Any]) -> Any:
    """The statement with the parameters it names (text() refuses missing ones)."""
    statement = text(sql)
    return statement.bindparams(**{k: v for k, v in params.items() if f":{k}" in sql})


async def recent_runs(conn: AsyncConnection, *, limit: int = 10) -> list[dict[str, Any]]:
    """The latest runs, newest first."""
    rows = await conn.execute(
        select(retention_runs).order_by(retention_runs.c.id.desc()).limit(limit)
    )
    return [dict(row._mapping) for row in rows]
