"""The HTTP API: ingestion, journeys and users, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from orchestrator.api import journeys, tracking
from orchestrator.services import Services

log = logging.getLogger(__name__)


def create_app(services: Services, *, sweep: bool = True) -> FastAPI:
    """The API over the given services; with `sweep`, unrouted events are retried."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweep_forever(services)) if sweep else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="Journey orchestrator",
        summary="Segment-compatible event ingestion and journey state",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(tracking.router)
    app.include_router(journeys.router)
    return app


async def _sweep_forever(services: Services) -> None:
    older_than = timedelta(seconds=services.settings.reroute_after_seconds)
    while True:
        await asyncio.sleep(max(1.0, older_than.total_seconds() / 2))
        try:
            if routed := await services.router.sweep(older_than):
                log.warning("re-routed %d events that a request left unrouted", routed)
        except Exception:
            log.exception("sweeping unrouted events failed; will try again")
