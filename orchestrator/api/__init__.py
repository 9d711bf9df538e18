"""The HTTP API: ingestion, journeys and users, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orchestrator.api import (
    arbitration,
    catalog,
    inbox,
    journeys,
    ranking,
    receipts,
    tracking,
)
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
            await services.http.aclose()

    app = FastAPI(
        title="Journey orchestrator",
        summary="Segment-compatible ingestion, journeys, arbitration, receipts, inbox",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(tracking.router)
    app.include_router(arbitration.router)
    app.include_router(journeys.router)
    app.include_router(receipts.router)
    app.include_router(inbox.router)
    app.include_router(ranking.router)
    app.include_router(catalog.router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _refused)
    return app


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    """400 naming the field, like ingestion (rather than FastAPI's 422)."""
    assert isinstance(exc, RequestValidationError)
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"] if part not in ("body", "query", "path")]
    return JSONResponse({"error": error["msg"], "field": ".".join(loc)}, status_code=400)


async def _refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    body = exc.detail if isinstance(exc.detail, dict) else {"error": exc.detail}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _sweep_forever(services: Services) -> None:
    older_than = timedelta(seconds=services.settings.reroute_after_seconds)
    while True:
        await asyncio.sleep(max(1.0, older_than.total_seconds() / 2))
        try:
            if routed := await services.router.sweep(older_than):
                log.warning("re-routed %d events that a request left unrouted", routed)
        except Exception:
            log.exception("sweeping unrouted events failed; will try again")
