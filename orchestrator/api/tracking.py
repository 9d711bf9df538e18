"""Segment-compatible ingestion: `/v1/batch`, `/v1/track`, `/v1/identify`, ...

Authenticated by write key (HTTP Basic, key as user name, or `writeKey` in the
body). A request is all or nothing: one bad message (400 naming its field), an
unknown key (401) or an oversized body (413) stores nothing.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orchestrator.api.auth import BadCredentials, header_write_key
from orchestrator.api.deps import ServicesDep
from orchestrator.services import Services
from orchestrator.tracking import BadInput, TrackingMessage, parse_request

router = APIRouter(tags=["tracking"])

_MESSAGE_SCHEMA = TrackingMessage.model_json_schema(by_alias=True)
_SINGLE_TYPES = ("track", "identify", "page", "screen", "alias", "group")


class Refused(Exception):
    def __init__(self, status: int, message: str, field: str = "") -> None:
        self.status, self.message, self.field = status, message, field


def _error(status: int, message: str, field: str = "") -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if field:
        body["field"] = field
    headers = {"WWW-Authenticate": 'Basic realm="write key"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"request body is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise Refused(400, "body is not valid gzip") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise Refused(413, f"decompressed body is over the {limit}-byte limit")
    return body


async def _ingest(request: Request, services: Services, implied_type: str | None) -> JSONResponse:
    settings = services.settings
    try:
        try:
            key = header_write_key(request)
        except BadCredentials as exc:
            raise Refused(401, str(exc)) from None
        if key is not None and services.config.source_for(key) is None:
            raise Refused(401, "unknown write key")
        raw = await _read_body(request, settings.max_request_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"body is not valid JSON: {exc}") from None
        if key is None:
            key = body.get("writeKey") if isinstance(body, dict) else None
            if not isinstance(key, str) or not key:
                raise Refused(401, "missing write key: use HTTP Basic auth with the key as user")
        source = services.config.source_for(key)
        if source is None:
            raise Refused(401, "unknown write key")
        now = services.clock()
        batch = parse_request(
            body, implied_type=implied_type, max_event_bytes=settings.max_event_bytes, now=now
        )
    except Refused as exc:
        return _error(exc.status, exc.message, exc.field)
    except BadInput as exc:
        return _error(exc.status, exc.message, exc.field)
    await services.ingest(batch, source=source.name, now=now)
    return JSONResponse({"success": True})


def _openapi(schema: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
        "responses": {
            400: {"description": "A message is invalid; `field` names it. Nothing was stored."},
            401: {"description": "Unknown or missing write key. Nothing was stored."},
            413: {"description": "The body or a message is too large. Nothing was stored."},
        },
    }


@router.post(
    "/v1/batch",
    **_openapi(
        {
            "type": "object",
            "required": ["batch"],
            "properties": {"batch": {"type": "array", "items": _MESSAGE_SCHEMA}},
        },
        "Send many messages at once (what Segment's libraries use)",
    ),
)
async def batch(request: Request, services: ServicesDep) -> JSONResponse:
    return await _ingest(request, services, None)


def _single(kind: str) -> None:
    async def endpoint(request: Request, services: ServicesDep) -> JSONResponse:
        return await _ingest(request, services, kind)

    endpoint.__name__ = kind
    router.add_api_route(
        f"/v1/{kind}", endpoint, methods=["POST"], **_openapi(_MESSAGE_SCHEMA, f"Send one {kind}")
    )


for _kind in _SINGLE_TYPES:
    _single(_kind)
