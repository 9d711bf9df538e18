"""All of the doctor's checks, in the order an operator fixes things: settings, the
workspace and its secrets, Postgres, Temporal, then the systems outside."""

from __future__ import annotations

from collections.abc import Awaitable

from orchestrator.doctor.configuration import check_secrets, check_settings, check_workspace
from orchestrator.doctor.database import (
    check_connections,
    check_database,
    check_migrations,
    check_ranking,
    open_engine,
)
from orchestrator.doctor.endpoints import check_endpoints, check_kafka
from orchestrator.doctor.report import Finding, fail, skip
from orchestrator.doctor.temporal import (
    check_frontend,
    check_namespace,
    check_search_attributes,
    check_workers,
)
from orchestrator.settings import Settings

# How long one network check waits for an answer, in seconds.
TIMEOUT = 3.0


async def diagnose(settings: Settings, *, timeout: float = TIMEOUT) -> list[Finding]:
    """Every finding about the deployment `settings` describe."""
    findings: list[Finding] = []
    workspace_finding, loaded = check_workspace(settings)
    findings += [workspace_finding, check_secrets(settings, loaded)]
    config = loaded.workspace.config if loaded.workspace else None

    engine = None
    url = settings.database_url
    if not url:
        findings.append(fail(
            "database",
            "ORCHESTRATOR_DATABASE_URL is not set (and no `orchestrator dev` runs here)",
            "set it to postgresql://user:password@host:port/database",
        ))  # fmt: skip
        findings += [skip(name, "no database") for name in ("migrations", "connections")]
    else:
        engine = open_engine(url, timeout=timeout)
        reached = await check_database(engine, url, timeout=timeout)
        findings.append(reached.finding)
        if reached.reachable:
            findings.append(await _guarded("migrations", check_migrations(engine, url)))
            findings.append(await _guarded("connections", check_connections(engine, settings)))
        else:
            findings += [skip(n, "the database does not answer")
                         for n in ("migrations", "connections")]  # fmt: skip
            await engine.dispose()
            engine = None
    try:
        findings += await _temporal(settings, timeout=timeout)
        if config is None:
            findings += [skip(n, "the workspace does not load")
                         for n in ("endpoints", "kafka", "ranking")]  # fmt: skip
        else:
            findings += await check_endpoints(config, timeout=timeout)
            findings.append(await _guarded("kafka", check_kafka(config.kafka, timeout=timeout)))
            findings.append(await _guarded("ranking", check_ranking(engine, config.ranking)))
    finally:
        if engine is not None:
            await engine.dispose()
    return findings


async def _temporal(settings: Settings, *, timeout: float) -> list[Finding]:
    frontend, client = await check_frontend(settings, timeout=timeout)
    after = ("namespace", "search attributes", "workers")
    if client is None:
        return [frontend, *(skip(n, "Temporal does not answer") for n in after)]
    namespace = await _guarded("namespace", check_namespace(client, settings, timeout=timeout))
    if namespace.status != "ok":
        return [frontend, namespace, *(skip(n, "no namespace") for n in after[1:])]
    return [
        frontend,
        namespace,
        await _guarded("search attributes",
                       check_search_attributes(client, settings, timeout=timeout)),
        await _guarded("workers", check_workers(client, settings, timeout=timeout)),
    ]  # fmt: skip


async def _guarded(name: str, check: Awaitable[Finding]) -> Finding:
    """A check that breaks (a permission missing, a server too old) is a finding too."""
    try:
        return await check
    except Exception as exc:
        return fail(name, f"the check itself failed: {type(exc).__name__}: {exc}")


def diagnose_settings() -> tuple[Finding, Settings | None]:
    """The settings from the environment (the first check; the others need them)."""
    return check_settings()
