"""Receipts from channel systems (`/v1/webhooks/receipts/{channel}`) and one-click
unsubscribe links (`/v1/unsubscribe/{token}`)."""

from __future__ import annotations

import html
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from channels.signing import SignatureError, verify
from channels.unsubscribe import InvalidLink, Unsubscribe
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute, read_body
from orchestrator.json_checks import problem
from orchestrator.receipts import (
    ReceiptBody,
    Replayed,
    UnknownMessage,
    record_receipt,
    record_unsubscribe,
)

router = APIRouter(tags=["channels"], route_class=GuardedRoute)

MAX_RECEIPT_BYTES = 64 * 1024


# Public: the signature is the credential (checked before anything is read or stored).
SIGNED: dict[str, Any] = {
    "security": [],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReceiptBody"}}},
    },
}


def schemas() -> dict[str, Any]:
    """The receipt body's JSON Schemas, for the OpenAPI document's components."""
    schema = ReceiptBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "ReceiptBody": schema}


@router.post(
    "/v1/webhooks/receipts/{channel}",
    status_code=204,
    openapi_extra=SIGNED,
    responses={
        400: {"description": "The receipt is malformed; `field` names the problem."},
        401: {"description": "Unsigned, wrongly signed, stale or replayed. Nothing changed."},
        404: {"description": "Unknown channel, or a message this channel never sent."},
        413: {"description": f"The receipt is over {MAX_RECEIPT_BYTES} bytes."},
    },
)
async def receipt(
    request: Request, services: ServicesDep, channel: str = Path(max_length=20)
) -> Response:
    """A delivery receipt, signed like our messages (Standard Webhooks, the channel's
    secrets). It updates the message, suppression and consent, and wakes journeys."""
    endpoint = services.config.channels.get(channel)  # type: ignore[call-overload]
    if endpoint is None:
        raise HTTPException(404, f"no channel {channel!r} is configured")
    body = await read_body(request, MAX_RECEIPT_BYTES)
    if body is None:
        raise HTTPException(413, f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")
    try:
        webhook_id = verify(
            endpoint.secrets(), headers=request.headers, body=body, now=services.clock()
        )
    except SignatureError as exc:
        raise HTTPException(401, str(exc)) from None
    try:
        raw = orjson.loads(body)
        if found := problem(raw):
            field, message = found
            raise HTTPException(400, {"error": f"{field} {message}", "field": field})
        parsed = ReceiptBody.model_validate(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise HTTPException(400, {"error": error["msg"], "field": field}) from None
    try:
        await record_receipt(services, channel=channel, webhook_id=webhook_id, body=parsed)
    except Replayed as exc:
        raise HTTPException(401, str(exc)) from None
    except UnknownMessage as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)


def _read_link(services: ServicesDep, token: str) -> Unsubscribe:
    if services.links is None:
        raise HTTPException(404, "this workspace sends no email, so it has no unsubscribe links")
    try:
        return services.links.read(token)
    except InvalidLink as exc:
        raise HTTPException(400, f"this unsubscribe link is not valid: {exc}") from None


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">{body}</body></html>"""


def _what(what: Unsubscribe) -> str:
    category = "all" if what.category == "*" else html.escape(what.category)
    return f"{category} {html.escape(what.channel)} messages"


Token = Path(max_length=1000)
# Public: the link's signature is the credential.
_LINK: dict[str, Any] = {"security": []}
_LINK_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"description": "The link is not valid (tampered or malformed)."},
    404: {"description": "This workspace sends no email."},
}


@router.get(
    "/v1/unsubscribe/{token}",
    response_class=HTMLResponse,
    openapi_extra=_LINK,
    responses=_LINK_REFUSED,
)
async def unsubscribe_page(services: ServicesDep, token: str = Token) -> HTMLResponse:
    """The page the link opens: it asks first, so mail scanners following links do not
    unsubscribe anyone (RFC 8058)."""
    what = _read_link(services, token)
    form = (
        f"<p>Stop receiving {_what(what)}?</p>"
        f'<form method="post"><button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(_PAGE.format(title="Unsubscribe", body=form))


@router.post(
    "/v1/unsubscribe/{token}",
    response_class=HTMLResponse,
    openapi_extra=_LINK,
    responses=_LINK_REFUSED,
)
async def unsubscribe(services: ServicesDep, token: str = Token) -> HTMLResponse:
    """One click (`List-Unsubscribe-Post: List-Unsubscribe=One-Click`) or the page's button."""
    what = _read_link(services, token)
    await record_unsubscribe(services, what)
    done = f"<p>You are unsubscribed from {_what(what)}.</p>"
    return HTMLResponse(_PAGE.format(title="Unsubscribed", body=done))
