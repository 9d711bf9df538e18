"""The long-lived objects an API process shares: engine, Temporal client, registry, router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client

from channels.ranking import Recommender
from channels.unsubscribe import UnsubscribeLinks
from orchestrator.arbitration import Arbitration
from orchestrator.database import create_engine
from orchestrator.event_store import store_events
from orchestrator.metrics.ingestion import count_accepted
from orchestrator.ranking.serving import build_recommender
from orchestrator.registry import JourneyRegistry
from orchestrator.routing import Clock, Router, utc_now
from orchestrator.segments.keeper import follow_events
from orchestrator.settings import Settings
from orchestrator.temporal import connect
from orchestrator.tracing.provider import tracing_enabled
from orchestrator.tracking import Incoming
from orchestrator.tracking_plan.enforcement import Violation
from orchestrator.tracking_plan.store import record_violations
from orchestrator.users.erased import ErasedIds
from orchestrator.workspace import Workspace, WorkspaceConfig, load_workspace
from rules.policy import Policy

# Work done in the ingesting transaction first; it returns more events to store.
Step = Callable[[AsyncConnection], Awaitable[Sequence[Incoming]]]


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
    links: UnsubscribeLinks | None
    recommender: Recommender
    http: httpx.AsyncClient = field(repr=False)  # for an external ranking model
    erased: ErasedIds = field(repr=False)  # the suppression list of erased users

    async def ingest(
        self,
        batch: Sequence[Incoming],
        *,
        source: str,
        now: datetime,
        first: Step | None = None,
        trusted: bool = True,
        violations: Sequence[Violation] = (),
    ) -> None:
        """Store events and route them to journeys. `first` runs in the same transaction
        before them and may add events; when it raises, nothing is stored. `trusted`:
        a server-side source (see `store_events`). `violations` of the tracking plan
        (accepted under `report`) are counted for the new messages."""
        snapshot = await self.registry.snapshot()
        async with self.engine.begin() as conn:
            if first is not None:
                batch = [*batch, *await first(conn)]
            # Erased users' events are dropped, unnamed (orchestrator.users.erased): those
            # naming only a user by the insert itself, the others by one query first.
            batch = await self.erased.drop_erased(conn, batch, insert_checks_users=True)
            stored = await store_events(
                conn, batch, source=source, received_at=now, snapshot=snapshot,
                policy=self.policy, trusted=trusted, erased_key=await self.erased.key(),
            )  # fmt: skip
            # Computed traits and segments follow the events in the same transaction.
            routable = await follow_events(
                conn, stored, snapshot=snapshot, policy=self.policy, now=now
            )
            plan = await self.router.plan(conn, routable, snapshot, fresh=True)
            if violations:  # last: the counters' rows stay locked only until the commit
                new = {item.message_id.removeprefix(f"{source}/") for item, _ in stored.fresh}
                await record_violations(conn, violations, stored=new, now=now,
                                        plan_version=snapshot.tracking_plan.version)  # fmt: skip
        count_accepted(source, len(batch))
        # Stored is accepted: a routing failure is retried by the sweeper, not the client.
        if stored.merges:
            await self.router.tell_merges(stored.merges)
        await self.router.route(plan, snapshot, within=self.settings.route_within_seconds)


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
        global_control=config.control_group(),
    )
    arbitration = Arbitration(
        engine, workspace.policy, default_timezone=config.default_timezone,
        global_control=config.control_group(),
    )  # fmt: skip
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=50))
    recommender = build_recommender(config.ranking, engine=engine, http=http, clock=clock)
    return Services(
        settings, config, workspace.policy, engine, client, registry, router, arbitration, clock,
        config.links.unsubscribe_links(), recommender, http, ErasedIds(engine),
    )  # fmt: skip


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Connect to Postgres and Temporal as the settings say; close on exit."""
    engine = create_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
    try:
        client = await connect(settings.temporal_address, settings.temporal_namespace,
                               tracing=tracing_enabled(settings))  # fmt: skip
        yield build_services(
            settings, workspace=load_workspace(settings.workspace), engine=engine, client=client
        )
    finally:
        await engine.dispose()
