"""What the doctor asks Postgres: does it answer, is the schema at head, do the
processes' pools fit in `max_connections`, and is there a ranking model to serve."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, NullPool, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.database import alembic_config, async_url
from orchestrator.doctor.report import Finding, fail, ok, plain_reason, skip, warn
from orchestrator.ranking.config import RankingConfig
from orchestrator.settings import Settings
from orchestrator.tables import ranking_models


def shown(url: str) -> str:
    """The URL as the doctor prints it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unparsable URL)"


def open_engine(url: str, *, timeout: float) -> AsyncEngine:
    """An engine for the doctor's few queries: no pool, a connect timeout."""
    return create_async_engine(
        async_url(url), poolclass=NullPool, connect_args={"timeout": timeout}
    )


@dataclass(frozen=True)
class Reached:
    finding: Finding
    reachable: bool


async def check_database(engine: AsyncEngine, url: str, *, timeout: float) -> Reached:
    try:
        async with asyncio.timeout(timeout * 2), engine.connect() as conn:
            version = await conn.scalar(text("SHOW server_version"))
    except Exception as exc:
        return Reached(
            fail(
                "database",
                f"cannot reach {shown(url)}: {plain_reason(exc)}",
                "check ORCHESTRATOR_DATABASE_URL, that Postgres runs and that it accepts "
                "this user from here",
            ),
            False,
        )
    return Reached(ok("database", f"{shown(url)} answers (PostgreSQL {version})"), True)


async def check_migrations(engine: AsyncEngine, url: str) -> Finding:
    """alembic current against alembic heads, in migrations."""
    script = ScriptDirectory.from_config(alembic_config(url))
    heads = tuple(script.get_heads())
    head = ", ".join(heads)
    async with engine.connect() as conn:
        current = tuple(await conn.run_sync(_current_heads))
    if not current:
        return fail(
            "migrations",
            "the database has no schema (no migration was ever applied)",
            "run `orchestrator migrate`",
        )
    if set(current) == set(heads):
        return ok("migrations", f"schema at head ({head}: {script.get_revision(heads[0]).doc})")
    unknown = [rev for rev in current if not _known(script, rev)]
    if unknown:
        return fail(
            "migrations",
            f"the database is at {', '.join(unknown)}, which this code does not know "
            f"(its head is {head}): a newer version migrated it",
            "run the version of the orchestrator that matches the database",
        )
    behind = len(list(script.iterate_revisions("heads", current)))
    return fail(
        "migrations",
        f"schema at {', '.join(current)}, {behind} migration(s) behind head {head}",
        "run `orchestrator migrate` before starting this version's processes",
    )


def _current_heads(conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(conn).get_current_heads())


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False


async def check_connections(engine: AsyncEngine, settings: Settings) -> Finding:
    """Each API or worker process holds up to 2 x db_pool_size connections (the pool
    and as many again in overflow); say how many such processes fit."""
    async with engine.connect() as conn:
        limit = int(await conn.scalar(text("SHOW max_connections")) or 0)
        reserved = int(await conn.scalar(text("SHOW superuser_reserved_connections")) or 0)
        in_use = int(await conn.scalar(text("SELECT count(*) FROM pg_stat_activity")) or 0)
    each = 2 * settings.db_pool_size
    room = (limit - reserved) // each
    said = (
        f"max_connections {limit} ({reserved} reserved, {in_use} in use now): room for "
        f"{room} API or worker process(es) at db_pool_size {settings.db_pool_size} "
        f"(up to {each} connections each)"
    )
    if room < 2:
        return warn(
            "connections",
            said,
            "lower ORCHESTRATOR_DB_POOL_SIZE, raise max_connections, or pool with PgBouncer",
        )
    return ok("connections", said)


async def check_ranking(engine: AsyncEngine | None, ranking: RankingConfig) -> Finding:
    """The built-in model has an active version to serve (else the baseline fills in)."""
    if ranking.url:
        return ok("ranking", f"an external model at {ranking.url} (reachability below)")
    if not ranking.builtin:
        return ok("ranking", "the popularity baseline fills ranked content (no model configured)")
    if engine is None:
        return skip("ranking", "the database does not answer")
    async with engine.connect() as conn:
        row = await _active(conn)
    if row is None:
        return warn(
            "ranking",
            "ranking.builtin is on but no version is active: the popularity baseline "
            "fills every ranked slot",
            "load the catalogue and run `orchestrator ranking train` (the worker retrains "
            "on schedule once there are purchases)",
        )
    version, degraded = row
    if degraded is not None:
        return warn(
            "ranking",
            f"version {version} is active but degraded ({degraded}): the baseline answers",
            "see `orchestrator ranking monitor`; train or activate another version",
        )
    return ok("ranking", f"version {version} of the built-in model is active")


async def _active(conn: AsyncConnection) -> tuple[int, str | None] | None:
    row = (
        await conn.execute(
            select(
                ranking_models.c.version,
                ranking_models.c.degraded_at,
                ranking_models.c.degraded_reason,
            ).where(ranking_models.c.status == "active")
        )
    ).first()
    if row is None:
        return None
    degraded = None if row.degraded_at is None else (row.degraded_reason or "no reason given")
    return int(row.version), degraded
