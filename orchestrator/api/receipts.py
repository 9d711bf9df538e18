"""Receipts from channel systems (`/v1/webhooks/receipts/{channel}`) and one-click
unsubscribe links (`/v1/unsubscribe/{token}`)."""

from __future__ import annotations

import html

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from channels.signing import SignatureError, verify
from channels.unsubscribe import InvalidLink, Unsubscribe
from orchestrator.api.deps import ServicesDep
from orchestrator.receipts import (
    ReceiptBody,
    Replayed,
    UnknownMessage,
    record_receipt,
    record_unsubscribe,
)

router = APIRouter(tags=["channels"])

MAX_RECEIPT_BYTES = 64 * 1024


@router.post(
    "/v1/webhooks/receipts/{channel}",
    status_code=204,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ReceiptBody.model_json_schema()}},
        }
    },
    responses={
        400: {"description": "The receipt is malformed; `field` names the problem."},
        401: {"description": "Unsigned, wrongly signed, stale or replayed. Nothing changed."},
        404: {"description": "Unknown channel, or a message this channel never sent."},
    },
)
async def receipt(channel: str, request: Request, services: ServicesDep) -> Response:
    """A delivery receipt, signed like our messages (Standard Webhooks, the channel's
    secrets). It updates the message, suppression and consent, and wakes journeys."""
    endpoint = services.config.channels.get(channel)  # type: ignore[call-overload]
    if endpoint is None:
        raise HTTPException(404, f"no channel {channel!r} is configured")
    body = await request.body()
    if len(body) > MAX_RECEIPT_BYTES:
        raise HTTPException(413, f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")
    try:
        webhook_id = verify(
            endpoint.secrets(), headers=request.headers, body=body, now=services.clock()
        )
    except SignatureError as exc:
        raise HTTPException(401, str(exc)) from None
    try:
        parsed = ReceiptBody.model_validate(orjson.loads(body))
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


@router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: str, services: ServicesDep) -> HTMLResponse:
    """The page the link opens: it asks first, so mail scanners following links do not
    unsubscribe anyone (RFC 8058)."""
    what = _read_link(services, token)
    form = (
        f"<p>Stop receiving {_what(what)}?</p>"
        f'<form method="post"><button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(_PAGE.format(title="Unsubscribe", body=form))


@router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, services: ServicesDep) -> HTMLResponse:
    """One click (`List-Unsubscribe-Post: List-Unsubscribe=One-Click`) or the page's button."""
    what = _read_link(services, token)
    await record_unsubscribe(services, what)
    done = f"<p>You are unsubscribed from {_what(what)}.</p>"
    return HTMLResponse(_PAGE.format(title="Unsubscribed", body=done))
