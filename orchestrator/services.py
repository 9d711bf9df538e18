"""The long-lived objects an API process shares: engine, Temporal client, registry, router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from orchestrator.arbitration import Arbitration
from orchestrator.database import create_engine
from orchestrator.registry import JourneyRegistry
from orchestrator.routing import Clock, Router, utc_now
from orchestrator.settings import Settings
from orchestrator.temporal import connect
from orchestrator.workspace import Workspace, WorkspaceConfig, load_workspace
from rules.policy import Policy


@dataclass(frozen=True)
class Services:
    settings: Settings
    config: WorkspaceConfig
    policy: Policy
    engine: AsyncEngine
    client: Client
    registry: JourneyRegistry
    router: Router
    arbitration: Arbitration
    clock: Clock


def build_services(
    settings: Settings,
    *,
    workspace: Workspace,
    engine: AsyncEngine,
    client: Client,
    clock: Clock = utc_now,
) -> Services:
    config = workspace.config
    registry = JourneyRegistry(engine)
    router = Router(
        engine=engine,
        client=client,
        registry=registry,
        task_queue=settings.task_queue,
        default_timezone=config.default_timezone,
        clock=clock,
    )
    arbitration = Arbitration(engine, workspace.policy, default_timezone=config.default_timezone)
    return Services(
        settings, config, workspace.policy, engine, client, registry, router, arbitration, clock
    )


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Connect to Postgres and Temporal as the settings say; close on exit."""
    engine = create_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
    try:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        yield build_services(
            settings, workspace=load_workspace(settings.workspace), engine=engine, client=client
        )
    finally:
        await engine.dispose()
