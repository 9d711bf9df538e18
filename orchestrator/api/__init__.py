"""The HTTP API: ingestion, journeys and users, arbitration, channels, ranking, health.

Errors are JSON with an `error` (and a `field` when one is to blame): 400 bad input,
401 no or unknown credential, 403 the wrong credential, 404, 409, 413 too large, 429
over a rate limit and 503 a dependency down (both with `Retry-After`). Nothing answers
500 by design; if something does, it is a bug and the body is still JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from orchestrator.api import (
    arbitration,
    audit,
    catalog,
    health,
    inbox,
    journeys,
    ranking,
    receipts,
    tracking,
)
from orchestrator.api.cors import Cors
from orchestrator.api.limits import Limits
from orchestrator.metrics import api as metrics_api
from orchestrator.metrics.http import RequestMetrics
from orchestrator.ranking import guard
from orchestrator.reports import alerts
from orchestrator.reports import api as reports_api
from orchestrator.reports import pages as report_pages
from orchestrator.segments import api as segments_api
from orchestrator.services import Services
from orchestrator.tracing.http import api_telemetry
from orchestrator.tracing.provider import tracing_enabled
from orchestrator.tracking_plan import api as tracking_plan_api
from orchestrator.users import api as users_api

log = logging.getLogger(__name__)

# What a client should wait before trying again when Postgres is away.
RETRY_AFTER_SECONDS = 5
_UNAVAILABLE = (
    sa.OperationalError,
    sa.InterfaceError,
    sa.TimeoutError,  # every pooled connection is busy
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
)


def create_app(services: Services, *, sweep: bool = True) -> FastAPI:
    """The API over the given services; with `sweep`, unrouted events are retried and
    alert conditions checked in the background."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = (
            [asyncio.create_task(_sweep_forever(services)),
             asyncio.create_task(_check_alerts_forever(services)),
             asyncio.create_task(_guard_ranking_forever(services))]
            if sweep else []
        )  # fmt: skip
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await services.router.close()
            await services.http.aclose()

    app = FastAPI(
        title="Journey orchestrator",
        summary="Segment-compatible ingestion, journeys, arbitration, receipts, inbox",
        version="0.1.0",
        lifespan=lifespan,
        # No redirects to the other spelling: they are built from the Host header.
        redirect_slashes=False,
        telemetry=api_telemetry(tracing=tracing_enabled(services.settings)),
    )
    app.state.services = services
    app.state.limits = Limits(services.config)
    for module in (tracking, arbitration, journeys, receipts, inbox, ranking, catalog, audit,
                   health, reports_api, report_pages, segments_api,
                   tracking_plan_api, users_api, metrics_api):  # fmt: skip
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _refused)
    for kind in _UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(sa.DBAPIError, _conflicted)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Exception, _failed)
    app.add_middleware(Cors, config=services.config)
    app.add_middleware(RequestMetrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(receipts.schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    """400 naming the field, like ingestion (rather than FastAPI's 422)."""
    assert isinstance(exc, RequestValidationError)
    error = exc.errors()[0]
    loc = [part for part in error["loc"] if part not in ("body", "query", "path")]
    message = str(error["msg"]).removeprefix("Value error, ")
    field = field_name(loc)
    return JSONResponse({"error": message, **({"field": field} if field else {})}, 400)


def field_name(loc: list[str | int]) -> str:
    """`items[1].name`, as ingestion names fields (`batch[3].event`)."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name


async def _refused(_request: Request, exc: Exception) -> JSONResponse:
    """Our refusals, and Starlette's own 404 and 405, as JSON with an `error`."""
    assert isinstance(exc, StarletteHTTPException)
    body = exc.detail if isinstance(exc.detail, dict) else {"error": exc.detail}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Postgres is unreachable (or every connection is busy): say when to come back.
    Requests write in one transaction, so nothing was half stored."""
    log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"error": "the database is unreachable or busy: nothing was stored, try again"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


# Postgres stopped the transaction for another's sake (a deadlock, a serialization
# failure): nothing was stored, and the same request will go through.
_TRY_AGAIN = ("40P01", "40001")


async def _conflicted(request: Request, exc: Exception) -> JSONResponse:
    if getattr(getattr(exc, "orig", None), "sqlstate", None) not in _TRY_AGAIN:
        return await _failed(request, exc)
    log.warning("%s %s: stopped by the database for a concurrent request: %s",
                request.method, request.url.path, exc)  # fmt: skip
    return JSONResponse(
        {"error": "a concurrent request changed the same data: nothing was stored, try again"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _gone(request: Request, _exc: Exception) -> JSONResponse:
    """The client went away mid-request: nobody reads the answer, nothing was stored."""
    log.info("%s %s: the client disconnected", request.method, request.url.path)
    return JSONResponse({"error": "the client disconnected"}, status_code=400)


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


async def _check_alerts_forever(services: Services) -> None:
    every = services.config.alerts.check_every.total_seconds()
    while True:
        await asyncio.sleep(every)
        try:
            for finding in await alerts.check(services, now=services.clock()):
                log.warning("alert: %s", finding.summary)
        except Exception:
            log.exception("checking alert conditions failed; will try again")


async def _guard_ranking_forever(services: Services) -> None:
    ranking = services.config.ranking
    if not ranking.builtin:
        return
    while True:
        await asyncio.sleep(ranking.monitoring.check_every.total_seconds())
        try:
            done = await guard.check(
                services.engine,
                ranking.monitoring,
                events=ranking.popularity_events,
                now=services.clock(),
            )
            for act in done:
                log.warning("ranking guard: %s", act)
        except Exception:
            log.exception("the ranking guard's check failed; will try again")


async def _sweep_forever(services: Services) -> None:
    await services.router.sweep_forever(timedelta(seconds=services.settings.reroute_after_seconds))
