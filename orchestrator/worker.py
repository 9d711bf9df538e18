"""The journey worker: JourneyWorkflow plus its activities, wired to Postgres and the channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from channels.adapters import build_channels
from channels.delivery import Clock, utc_now
from orchestrator.arbitration import Arbitration
from orchestrator.journey_store import PostgresJourneyStore
from orchestrator.temporal import journey_worker
from orchestrator.workspace import Workspace, WorkspaceConfig
from workflows.activities import Arbiter, JourneyActivities, JourneyStore


def build_activities(
    config: WorkspaceConfig,
    *,
    store: JourneyStore,
    arbiter: Arbiter,
    http: httpx.AsyncClient,
    clock: Clock = utc_now,
) -> JourneyActivities:
    """Activities delivering to the channels `orchestrator.yaml` configures."""
    endpoints = {
        name.value: {"url": ep.url, "secrets": ep.secrets(), "timeout": ep.timeout}
        for name, ep in config.channels.items()
    }
    return JourneyActivities(
        store=store,
        arbiter=arbiter,
        channels=build_channels(endpoints, client=http, clock=clock),
        http=http,
        webhook_secret=config.webhooks.signing_secret if config.webhooks else None,
        clock=clock,
    )


@asynccontextmanager
async def running_worker(
    client: Client,
    *,
    workspace: Workspace,
    engine: AsyncEngine,
    task_queue: str,
    store: JourneyStore | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """Run a worker until the block exits; `store` overrides the Postgres store."""
    config = workspace.config
    arbiter = Arbitration(engine, workspace.policy, default_timezone=config.default_timezone)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits) as http:
        activities = build_activities(
            config, store=store or PostgresJourneyStore(engine), arbiter=arbiter, http=http
        )
        async with journey_worker(
            client, task_queue=task_queue, activities=activities.all(), **options
        ) as worker:
            yield worker
