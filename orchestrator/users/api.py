"""`DELETE /v1/users/{id}`, its state, the restore after consent, and the export.

    DELETE /v1/users/{id}           202: the erasure is recorded, the id is on the
                                    suppression list, its workflow runs (users:erase)
    GET    /v1/users/{id}/erasure   the erasure's state and counts (users:erase)
    POST   /v1/users/{id}/restore   a new explicit consent: the id leaves the list
                                    (users:erase; the consent is recorded in the audit)
    GET    /v1/users/{id}/export    everything held about the user, one JSON document,
                                    streamed (users:export)

Erase, restore and export are audited; the first two name the user by keyed hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Path
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.access import audit
from orchestrator.api.auth import Caller, record_use, server_key_with
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute
from orchestrator.users import erased, erasure, export
from orchestrator.users.identity import MergedAway, refuse_merged

router = APIRouter(
    tags=["users"],
    route_class=GuardedRoute,
    responses={
        400: {"description": "A parameter is invalid; `field` names it"},
        401: {"description": "No credential, or an unknown one"},
        403: {"description": "Not a server API key with the scope"},
    },
)
Eraser = Annotated[Caller, Depends(server_key_with("users:erase"))]
Exporter = Annotated[Caller, Depends(server_key_with("users:export"))]
UserId = Annotated[str, Path(min_length=1, max_length=200)]


class ErasureAccepted(BaseModel):
    workflow_id: str = Field(description="The erasure's Temporal workflow (`erase:<hash>`)")
    status_url: str


class ErasureState(BaseModel):
    workflow_id: str
    status: str = Field(description="requested | erasing | erased | restored")
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    restored_at: datetime | None
    counts: dict[str, int] = Field(description="Rows deleted per table, Temporal workflows")


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consent: str = Field(
        min_length=1,
        max_length=500,
        description="Where the user's new explicit consent is recorded (a ticket, a "
        "signed form's reference): kept in the audit log, so no personal data here",
    )


@router.delete(
    "/v1/users/{user_id}",
    status_code=202,
    response_model=ErasureAccepted,
    responses={409: {"description": "The id was merged into another user: erase that one"}},
)
async def erase_user(services: ServicesDep, caller: Eraser, user_id: UserId) -> ErasureAccepted:
    """Erase the user everywhere (GDPR art. 17): profile, identities, events, messages,
    inbox, receipts, decisions, suppressions, enrollments, assignments, segments, their
    Temporal workflows. Asking again is harmless. Events for the id are dropped from now
    on, until a restore."""
    try:
        hashed = await erasure.request_erasure(
            engine=services.engine, client=services.client, erased_ids=services.erased,
            user_id=user_id, actor=caller.actor, task_queue=services.settings.task_queue,
            now=services.clock(),
        )  # fmt: skip
    except MergedAway as exc:
        raise HTTPException(409, str(exc)) from None
    return ErasureAccepted(
        workflow_id=erasure.workflow_id(hashed), status_url=f"/v1/users/{user_id}/erasure"
    )


@router.get(
    "/v1/users/{user_id}/erasure",
    response_model=ErasureState,
    responses={404: {"description": "The user was never erased"}},
)
async def erasure_state(services: ServicesDep, _caller: Eraser, user_id: UserId) -> ErasureState:
    """Where the user's erasure is."""
    hashed = await services.erased.hash(user_id)
    async with services.engine.connect() as conn:
        found = await erasure.status(conn, hashed)
    if found is None:
        raise HTTPException(404, "no erasure was requested for this user")
    return ErasureState(**found)


@router.post(
    "/v1/users/{user_id}/restore",
    response_model=ErasureState,
    responses={409: {"description": "Never erased, still erasing, or restored already"}},
)
async def restore_user(
    services: ServicesDep,
    caller: Eraser,
    user_id: UserId,
    body: Annotated[Consent, Body()],
) -> ErasureState:
    """The user gave a new explicit consent: take their ids off the suppression list so
    that their events are stored again. Nothing erased comes back."""
    hashed = await services.erased.hash(user_id)
    now = services.clock()
    async with services.engine.begin() as conn:
        try:
            await erased.restore(conn, erasure=hashed, now=now)
        except erased.NotRestorable as exc:
            raise HTTPException(409, str(exc)) from None
        await audit.record(conn, caller.actor, "user.restore", subject=erased.subject(hashed),
                           details={"consent": body.consent}, now=now)  # fmt: skip
        found = await erasure.status(conn, hashed)
    assert found is not None
    return ErasureState(**found)


@router.get(
    "/v1/users/{user_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/json": {}}, "description": "One JSON document, streamed"},
        409: {"description": "The id was merged into another user: export that one"},
        410: {"description": "The user was erased: nothing is held (the export is not audited)"},
    },
)
async def export_user(
    services: ServicesDep, caller: Exporter, user_id: UserId
) -> StreamingResponse:
    """Everything held about the user (GDPR art. 15) as one JSON document, written as it
    is read (a user with a million events costs the API one page of memory)."""
    async with services.engine.connect() as conn:
        try:
            await refuse_merged(conn, user_id)
            await erasure.refuse_erased(conn, services.erased, user_id)
        except MergedAway as exc:
            raise HTTPException(409, str(exc)) from None
        except erasure.Erased as exc:
            raise HTTPException(410, str(exc)) from None
    await record_use(services, caller, "user.export", user_id)
    return StreamingResponse(
        export.stream(services.engine, user_id, now=services.clock()),
        media_type="application/json",
        headers={"content-disposition": 'attachment; filename="user-export.json"'},
    )
