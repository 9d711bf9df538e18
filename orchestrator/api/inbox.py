"""The in-app inbox and web placements, for apps and websites (authenticated by write key).

GET  /v1/users/{id}/inbox?limit=&cursor=        unread first, then newest
POST /v1/users/{id}/inbox/{message_id}/read     counts as the message's open
POST /v1/users/{id}/inbox/{message_id}/dismiss
GET  /v1/users/{id}/placements/{placement}      the newest live message, or null
POST /v1/users/{id}/placements/{placement}/{message_id}/dismiss
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from orchestrator import inbox as store
from orchestrator.api.auth import SourceDep
from orchestrator.api.deps import ServicesDep
from orchestrator.receipts import UnknownMessage, record_app_action

router = APIRouter(tags=["inbox and placements"])

UserId = Path(min_length=1, max_length=200)


class InboxPage(BaseModel):
    messages: list[dict[str, Any]]
    unread: int
    next_cursor: str | None


class PlacementContent(BaseModel):
    placement: str
    message: dict[str, Any] | None


@router.get("/v1/users/{user_id}/inbox", response_model=InboxPage)
async def inbox(
    services: ServicesDep,
    _source: SourceDep,
    user_id: str = UserId,
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, max_length=500),
) -> InboxPage:
    async with services.engine.connect() as conn:
        try:
            page = await store.inbox(
                conn, user_id, now=services.clock(), limit=limit, cursor=cursor
            )
        except store.BadCursor as exc:
            raise HTTPException(400, {"error": str(exc), "field": "cursor"}) from None
    return InboxPage(messages=page.messages, unread=page.unread, next_cursor=page.next_cursor)


async def _act(
    services: ServicesDep,
    user_id: str,
    message_id: str,
    channel: Literal["in_app", "web"],
    action: Literal["read", "dismiss"],
) -> Response:
    try:
        await record_app_action(
            services, user_id=user_id, message_id=message_id, channel=channel, action=action
        )
    except UnknownMessage as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)


@router.post("/v1/users/{user_id}/inbox/{message_id}/read", status_code=204)
async def read(
    services: ServicesDep, _source: SourceDep, message_id: str, user_id: str = UserId
) -> Response:
    return await _act(services, user_id, message_id, "in_app", "read")


@router.post("/v1/users/{user_id}/inbox/{message_id}/dismiss", status_code=204)
async def dismiss(
    services: ServicesDep, _source: SourceDep, message_id: str, user_id: str = UserId
) -> Response:
    return await _act(services, user_id, message_id, "in_app", "dismiss")


@router.get("/v1/users/{user_id}/placements/{placement}", response_model=PlacementContent)
async def placement(
    services: ServicesDep,
    _source: SourceDep,
    user_id: str = UserId,
    placement: str = Path(pattern=r"^[a-z][a-z0-9_]*$"),
) -> PlacementContent:
    async with services.engine.connect() as conn:
        message = await store.placement(conn, user_id, placement, now=services.clock())
    return PlacementContent(placement=placement, message=message)


@router.post("/v1/users/{user_id}/placements/{placement}/{message_id}/dismiss", status_code=204)
async def dismiss_placement(
    services: ServicesDep,
    _source: SourceDep,
    placement: str,
    message_id: str,
    user_id: str = UserId,
) -> Response:
    return await _act(services, user_id, message_id, "web", "dismiss")
