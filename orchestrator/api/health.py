"""Liveness and readiness, for load balancers and orchestrators. Neither ever answers 500.

GET /healthz   the process serves requests (no dependency is touched)
GET /readyz    Postgres and Temporal answer in time; 503 naming what does not
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.services import Services

router = APIRouter(tags=["ops"], route_class=GuardedRoute)

CHECK_TIMEOUT = 2.0
READY_FOR = 1.0  # seconds a readiness answer is reused
PUBLIC: dict[str, Any] = {"security": []}


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]


@router.get("/healthz", response_model=Live, openapi_extra=PUBLIC)
async def health() -> Live:
    """The process is alive."""
    return Live(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    openapi_extra=PUBLIC,
    responses={503: {"model": Ready, "description": "A dependency does not answer"}},
)
async def ready(request: Request, services: ServicesDep) -> JSONResponse:
    """Postgres and Temporal both answer within two seconds (checked at most once a
    second, however often it is asked: it needs no credential)."""
    state = request.app.state
    checked_at, checks = getattr(state, "readiness", (0.0, {}))
    if time.monotonic() - checked_at > READY_FOR:
        postgres, temporal = await asyncio.gather(_postgres(services), _temporal(services))
        checks = {"postgres": postgres, "temporal": temporal}
        state.readiness = (time.monotonic(), checks)
    ok = all(v == "ok" for v in checks.values())
    body = Ready(status="ready" if ok else "not ready", checks=checks)
    return JSONResponse(
        body.model_dump(),
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )


async def _postgres(services: Services) -> str:
    async def check() -> None:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await _within(check())


async def _temporal(services: Services) -> str:
    client = services.client.service_client
    return await _within(client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT)))


async def _within(check: Any) -> str:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # any failure means "not ready", never a 500
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]
    return "ok"
