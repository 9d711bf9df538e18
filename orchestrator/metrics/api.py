"""`GET /metrics` on the API: Prometheus's text format, no credential (scrapers carry
none); keep it off the public internet at the load balancer (README, Operations)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from orchestrator.api.inputs import GuardedRoute
from orchestrator.metrics.exposition import CONTENT_TYPE, latest

router = APIRouter(tags=["ops"], route_class=GuardedRoute)
PUBLIC: dict[str, Any] = {"security": []}


@router.get("/metrics", include_in_schema=False, openapi_extra=PUBLIC)
async def metrics() -> Response:
    """Every metric of this API (of all its processes, when there are several)."""
    return Response(latest(), media_type=CONTENT_TYPE)
