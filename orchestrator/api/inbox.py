"""The in-app inbox and web placements, for apps and websites.

An app or page calls with a user token for its own user; a backend may call with a
server API key (`users:read` to read, `users:write` to mark read or dismiss). Every
call is in the audit log.

GET  /v1/users/{id}/inbox?limit=&cursor=        unread first, then newest
POST /v1/users/{id}/inbox/{message_id}/read     counts as the message's open
POST /v1/users/{id}/inbox/{message_id}/dismiss
GET  /v1/users/{id}/placements/{placement}      the newest live message, or null
POST /v1/users/{id}/placements/{placement}/{message_id}/dismiss
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from orchestrator import inbox as store
from orchestrator.api.auth import Caller, own_user_or_key, record_use
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.receipts import UnknownMessage, record_app_action

_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter is invalid; `field` names it"},
    401: {"description": "No credential, or an unknown or expired one"},
    403: {"description": "A user token for another user, or a key without the scope"},
}
router = APIRouter(tags=["inbox and placements"], route_class=GuardedRoute, responses=_REFUSED)

Reader = Annotated[Caller, Depends(own_user_or_key("users:read"))]
Actor = Annotated[Caller, Depends(own_user_or_key("users:write"))]

UserId = Path(min_length=1, max_length=200)
Placement = Path(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)


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
    caller: Reader,
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
    await record_use(services, caller, "inbox.read", user_id)
    return InboxPage(messages=page.messages, unread=page.unread, next_cursor=page.next_cursor)


async def _act(
    services: ServicesDep,
    caller: Caller,
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
    kind = "inbox" if channel == "in_app" else "placement"
    await record_use(services, caller, f"{kind}.{action}", user_id)
    return Response(status_code=204)


MessageId = Path(min_length=1, max_length=200)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such message"}}


@router.post("/v1/users/{user_id}/inbox/{message_id}/read", status_code=204, responses=_NOT_FOUND)
async def read(
    services: ServicesDep, caller: Actor, message_id: str = MessageId, user_id: str = UserId
) -> Response:
    return await _act(services, caller, user_id, message_id, "in_app", "read")


@router.post(
    "/v1/users/{user_id}/inbox/{message_id}/dismiss", status_code=204, responses=_NOT_FOUND
)
async def dismiss(
    services: ServicesDep, caller: Actor, message_id: str = MessageId, user_id: str = UserId
) -> Response:
    return await _act(services, caller, user_id, message_id, "in_app", "dismiss")


@router.get("/v1/users/{user_id}/placements/{placement}", response_model=PlacementContent)
async def placement(
    services: ServicesDep,
    caller: Reader,
    user_id: str = UserId,
    placement: str = Placement,
) -> PlacementContent:
    async with services.engine.connect() as conn:
        message = await store.placement(conn, user_id, placement, now=services.clock())
    await record_use(services, caller, "placement.read", user_id)
    return PlacementContent(placement=placement, message=message)


@router.post(
    "/v1/users/{user_id}/placements/{placement}/{message_id}/dismiss",
    status_code=204,
    responses=_NOT_FOUND,
)
async def dismiss_placement(
    services: ServicesDep,
    caller: Actor,
    placement: str = Placement,
    message_id: str = MessageId,
    user_id: str = UserId,
) -> Response:
    return await _act(services, caller, user_id, message_id, "web", "dismiss")
