"""The journey worker: JourneyWorkflow plus its activities, wired to Postgres and the channels."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from channels.adapters import ChannelDeps, build_channels
from channels.delivery import Clock, RateLimit, SignedPoster, utc_now
from channels.metrics import measured_transport
from orchestrator.arbitration import Arbitration
from orchestrator.inbox import PostgresMessageBox
from orchestrator.journey_store import PostgresJourneyStore
from orchestrator.ranking.schedule import RankingActivities
from orchestrator.ranking.serving import build_recommender
from orchestrator.registry import JourneyRegistry
from orchestrator.retention.schedule import RetentionActivities, schedule_retention
from orchestrator.routing import Router
from orchestrator.segments.upkeep import SegmentActivities, start_upkeep
from orchestrator.temporal import journey_worker, retention_worker, segments_worker
from orchestrator.users.erasure import ErasureActivities, UserErasure
from orchestrator.users.following import IdentityActivities
from orchestrator.workspace import Workspace, WorkspaceConfig
from workflows.activities import Arbiter, JourneyActivities, JourneyStore


class BriefActivityFailures(logging.Filter):
    """Shortens the Temporal SDK's "Completing activity as failed" warning to one line
    when the activity failed on purpose, with an ApplicationError (a provider down or
    answering 5xx, a refused message): its message says it all, and a retried delivery
    would otherwise print a 60-line traceback on every attempt. With DEBUG on, and for
    any other exception (a bug), the traceback stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if (
            not isinstance(error, ApplicationError)
            or getattr(record, "__temporal_error_identifier", None) != "ActivityFailure"
            or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        ):
            return True
        details = getattr(record, "temporal_activity", None) or {}
        record.msg = "%s failed (attempt %s, workflow %s): %s: %s%s"
        record.args = (
            details.get("activity_type", "activity"),
            details.get("attempt", "?"),
            details.get("workflow_id", "?"),
            error.type or "ApplicationError",
            " ".join(error.message.split()),  # a provider's answer may span lines
            "; not retried" if error.non_retryable else "",
        )
        record.exc_info = record.exc_text = None
        return True


_BRIEF_ACTIVITY_FAILURES = BriefActivityFailures()


def build_channel_deps(
    config: WorkspaceConfig, *, engine: AsyncEngine, http: httpx.AsyncClient, clock: Clock
) -> ChannelDeps:
    """What every adapter of this process shares: the recommender, links and storage."""
    recommender = build_recommender(config.ranking, engine=engine, http=http, clock=clock)
    return ChannelDeps(
        links=config.links.unsubscribe_links(),
        box=PostgresMessageBox(engine),
        recommender=recommender,
        clock=clock,
    )


@asynccontextmanager
async def channel_clients(config: WorkspaceConfig) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """An HTTP client per channel provider, pooled to its `max_in_flight`: a small pool
    per provider costs less CPU per request than one large shared pool."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, endpoint in config.channels.items():
            size = endpoint.max_in_flight
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
            transport = measured_transport(name.value, limits=limits)
            clients[name.value] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport)
            )
        yield clients


def build_activities(
    config: WorkspaceConfig,
    *,
    store: JourneyStore,
    arbiter: Arbiter,
    http: httpx.AsyncClient,
    clients: Mapping[str, httpx.AsyncClient],
    deps: ChannelDeps,
) -> JourneyActivities:
    """Activities delivering to the channels `orchestrator.yaml` configures; `http`
    serves webhook steps and the ranking model, `clients` the channel providers."""
    posters = {
        name.value: SignedPoster(
            url=ep.url,
            secrets=ep.secrets(),
            client=clients[name.value],
            timeout=ep.timeout,
            clock=deps.clock,
            rate_limit=RateLimit(ep.rate_limit.per_second, ep.rate_limit.burst, name=name.value)
            if ep.rate_limit
            else None,
            max_in_flight=ep.max_in_flight,
        )
        if ep.url
        else None
        for name, ep in config.channels.items()
    }
    return JourneyActivities(
        store=store,
        arbiter=arbiter,
        channels=build_channels(posters, deps),
        http=http,
        webhook_secret=config.webhooks.signing_secret if config.webhooks else None,
        clock=deps.clock,
    )


@asynccontextmanager
async def running_worker(
    client: Client,
    *,
    workspace: Workspace,
    engine: AsyncEngine,
    task_queue: str,
    store: JourneyStore | None = None,
    upkeep: bool = False,
    **options: Any,
) -> AsyncIterator[Worker]:
    """Run a worker until the block exits; `store` overrides the Postgres store.

    `upkeep` also starts the task queue's `SegmentUpkeep` workflow (if it is not running
    yet) and creates or updates its retention schedule: production workers and
    `orchestrator dev` do; tests that travel in time start them themselves when they
    want them, since the upkeep wakes at least every `refresh_every`."""
    # The SDK logs each failed activity attempt here (adding the filter again is a no-op).
    logging.getLogger("temporalio.activity").addFilter(_BRIEF_ACTIVITY_FAILURES)
    config = workspace.config
    arbiter = Arbitration(
        engine, workspace.policy, default_timezone=config.default_timezone,
        global_control=config.control_group(),
    )  # fmt: skip
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits) as http, channel_clients(config) as clients:
        deps = build_channel_deps(config, engine=engine, http=http, clock=utc_now)
        activities = build_activities(
            config,
            store=store or PostgresJourneyStore(engine),
            arbiter=arbiter,
            http=http,
            clients=clients,
            deps=deps,
        )
        ranking = RankingActivities(
            engine, events=config.ranking.popularity_events, drift=config.ranking.drift,
            monitoring=config.ranking.monitoring,
        )  # fmt: skip
        identity = IdentityActivities(engine=engine, client=client, policy=workspace.policy)
        router = Router(
            engine=engine, client=client, registry=JourneyRegistry(engine), task_queue=task_queue,
            default_timezone=config.default_timezone, global_control=config.control_group(),
        )  # fmt: skip
        segments = SegmentActivities(
            engine=engine, client=client, router=router, policy=workspace.policy,
            task_queue=task_queue, default_timezone=config.default_timezone,
            refresh_every=config.segments.refresh_every,
        )  # fmt: skip
        retention = RetentionActivities(
            engine, config=config.retention, policy=workspace.policy,
            global_control=config.global_control > 0,
        )  # fmt: skip
        erasure = ErasureActivities(engine=engine, client=client)
        async with (
            journey_worker(
                client,
                task_queue=task_queue,
                activities=[
                    *activities.all(),
                    ranking.train_ranking_model,
                    ranking.ranking_drift,
                    identity.adopt_user,
                ],
                **options,
            ) as worker,
            # Erasures share the queue of the workflows that are not journeys.
            segments_worker(
                client,
                task_queue=task_queue,
                activities=[*segments.all(), *erasure.all()],
                workflows=[UserErasure],
            ),
            retention_worker(client, task_queue=task_queue, activities=retention.all()),
        ):
            if upkeep:
                await start_upkeep(client, task_queue, every=config.segments.refresh_every)
                await schedule_retention(client, config=config.retention, task_queue=task_queue)
            try:
                yield worker
            finally:
                await router.close()
