"""`GET /v1/audit`: who wrote the catalogue, deployed, or read a user's data (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from orchestrator.access import audit
from orchestrator.api.auth import Caller, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.json_checks import Instant

router = APIRouter(tags=["ops"], route_class=GuardedRoute)


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_kind: str
    actor: str
    action: str
    subject: str | None
    details: dict[str, Any]
    client: str | None


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before: int | None


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with scope `admin`"},
    },
)
async def audit_log(
    services: ServicesDep,
    _caller: Annotated[Caller, Depends(server_key_with("admin"))],
    subject: str | None = Query(default=None, max_length=200, description="A user id"),
    actor: str | None = Query(default=None, max_length=200),
    action: str | None = Query(default=None, max_length=100),
    since: Instant | None = None,
    before: int | None = Query(
        default=None, ge=1, le=2**63 - 1, description="`next_before` of a page"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> AuditPage:
    """Entries newest first, a page at a time."""
    async with services.engine.connect() as conn:
        rows = await audit.entries(
            conn, subject=subject, actor=actor, action=action, since=since,
            before_id=before, limit=limit,
        )  # fmt: skip
    return AuditPage(
        entries=[AuditEntry(**r) for r in rows],
        next_before=rows[-1]["id"] if len(rows) == limit else None,
    )
