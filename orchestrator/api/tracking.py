"""Segment-compatible ingestion: `/v1/batch`, `/v1/track`, `/v1/identify`, ...

Authenticated by write key (HTTP Basic, key as user name, or `writeKey` in the
body). A request is all or nothing: one bad message (400 naming its field), an
unknown key (401), another kind of credential (403), an oversized body (413) or a
source over its rate limit (429 with Retry-After) stores nothing.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse

from channels.base import ADDRESSES
from orchestrator.api.auth import WRITE_KEY, BadCredentials, identify
from orchestrator.api.deps import ServicesDep
from orchestrator.api.inputs import GuardedRoute, read_body
from orchestrator.api.limits import Limits
from orchestrator.json_checks import nul_free
from orchestrator.metrics.ingestion import count_refusal
from orchestrator.profiles import ProfileTooLarge
from orchestrator.receipts import EVENTS
from orchestrator.services import Services
from orchestrator.tracking import BadInput, Incoming, TrackingMessage, parse_request
from orchestrator.tracking_plan.enforcement import screen
from orchestrator.workspace import WriteKey


class IngestionRoute(GuardedRoute):
    credentials_first = False  # the write key may be in the body: `_ingest` finds it


router = APIRouter(tags=["tracking"], route_class=IngestionRoute)

_SINGLE_TYPES = ("track", "identify", "page", "screen", "alias", "group")
RECEIPT_EVENTS = frozenset(EVENTS.values())


_IDS = ("userId", "anonymousId", "previousId", "groupId")


def _given(*names: str) -> dict[str, Any]:
    # Ids may be numbers (taken as their text); the event name is text.
    kinds = {n: {"type": ["string", "number"] if n in _IDS else "string"} for n in names}
    return {"required": list(names), "properties": kinds}


def _rules(kind: str) -> dict[str, Any]:
    """What a message of this type must hold, as `parse_message` checks it."""
    if kind == "alias":
        return _given("previousId", "userId")
    needs = {"track": ("event",), "group": ("groupId",)}.get(kind, ())
    return {**_given(*needs), "anyOf": [_given("userId"), _given("anonymousId")]}


def _message_schema(kind: str | None) -> dict[str, Any]:
    """One message on `/v1/<kind>` (its type may be left out), or any message in a batch."""
    base = TrackingMessage.model_json_schema(by_alias=True)
    for name in _IDS:
        # Some libraries send numeric ids; they are taken as their text.
        base["properties"][name] = {
            "anyOf": [{"type": "string", "minLength": 1, "maxLength": 200}, {"type": "number"},
                      {"type": "null"}],
        }  # fmt: skip
    base["properties"]["timestamp"] = {
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}, {"type": "null"}],
        "description": "ISO 8601, or seconds (milliseconds above 2e10) since 1970; at most 24 "
        "hours ahead, else the time received is used",
    }
    if kind is not None:
        properties = {**base["properties"], "type": {"const": kind}}
        base.pop("required", None)  # the endpoint implies the type
        return {**base, "properties": properties, "allOf": [_rules(kind)]}
    branches = [
        {"if": {"properties": {"type": {"const": k}}}, "then": _rules(k)} for k in _SINGLE_TYPES
    ]
    return {**base, "required": ["type"], "allOf": branches}


class Refused(Exception):
    def __init__(
        self, status: int, message: str, field: str = "", *, retry_after: int | None = None
    ) -> None:
        self.status, self.message, self.field = status, message, field
        self.retry_after = retry_after


def _error(exc: Refused) -> JSONResponse:
    count_refusal(exc.status)
    body: dict[str, Any] = {"success": False, "error": exc.message}
    if exc.field:
        body["field"] = exc.field
    headers = None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Basic realm="write key"'}
    elif exc.retry_after is not None:
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    raw = await read_body(request, limit)
    if raw is None:
        raise Refused(413, f"request body is over the {limit}-byte limit")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, limit + 1)
        except zlib.error:
            raise Refused(400, "body is not valid gzip") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise Refused(413, f"decompressed body is over the {limit}-byte limit")
        if not inflater.eof or inflater.unused_data:
            raise Refused(400, "body is not valid gzip: truncated, or followed by other data")
        return body
    return raw


def _source(request: Request, services: Services) -> WriteKey | None:
    """The source the Authorization header names (None: look for `writeKey` in the body)."""
    try:
        caller = identify(request, services)
    except BadCredentials as exc:
        raise Refused(401, str(exc)) from None
    if caller is not None and caller.source is None:
        raise Refused(403, "ingestion takes a source's write key (HTTP Basic), not this credential")
    return caller.source if caller else None


def _public_may_send(batch: list[Incoming], services: Services, *, batched: bool) -> None:
    """A public key may not speak for the product or the channel systems, nor decide who
    gets messages: receipt events, events that change consent or suppressions, and the
    traits that say where messages go or whether they may (consent, do-not-contact,
    email address, device tokens) come from server-side sources only."""
    policy = services.policy
    suppression = policy.suppression
    reserved = {*RECEIPT_EVENTS, *policy.consent.unsubscribe_events,
                *suppression.bounce_events, *suppression.complaint_events}  # fmt: skip
    protected = {policy.consent.trait, suppression.do_not_contact_trait, *ADDRESSES,
                 *(trait for trait in policy.reachability.values() if trait)}  # fmt: skip
    for i, item in enumerate(batch):
        at = f"batch[{i}]." if batched else ""
        if item.type == "track" and item.event in reserved:
            raise Refused(403, f"only a server-side source may send {item.event!r}", f"{at}event")
        if item.type != "group" and (taken := sorted(protected & item.traits.keys())):
            message = f"only a server-side source may set the trait {taken[0]!r}"
            raise Refused(403, message, f"{at}traits.{taken[0]}")


def _admit(limits: Limits, source: WriteKey, request: Request) -> None:
    client = request.client.host if request.client else None
    if wait := limits.source(source, client):
        raise Refused(429, f"source {source.name!r} is over its rate limit", retry_after=wait)


async def _ingest(request: Request, services: Services, implied_type: str | None) -> JSONResponse:
    settings = services.settings
    limits: Limits = request.app.state.limits
    try:
        source = _source(request, services)
        if source is not None:
            _admit(limits, source, request)
        raw = await _read_body(request, settings.max_request_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"body is not valid JSON: {exc}") from None
        if source is None:
            key = body.get("writeKey") if isinstance(body, dict) else None
            if not isinstance(key, str) or not key:
                raise Refused(401, "missing write key: use HTTP Basic auth with the key as user")
            source = services.config.source_for(key)
            if source is None:
                raise Refused(401, "unknown write key")
            _admit(limits, source, request)
        now = services.clock()
        batch = parse_request(
            body, implied_type=implied_type, max_event_bytes=settings.max_event_bytes, now=now,
            nul_free=nul_free(raw),
        )  # fmt: skip
        if not source.server_side:
            _public_may_send(batch, services, batched=implied_type is None)
        plan = (await services.registry.snapshot()).tracking_plan.plan
        violations = screen(plan, batch, batched=implied_type is None)
    except Refused as exc:
        return _error(exc)
    except BadInput as exc:
        return _error(Refused(exc.status, exc.message, exc.field))
    try:
        await services.ingest(
            batch, source=source.name, now=now, trusted=source.server_side, violations=violations
        )
    except ProfileTooLarge as exc:
        return _error(Refused(400, str(exc), "traits"))
    return JSONResponse({"success": True})


def _openapi(schema: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
        "responses": {
            400: {
                "description": "A message is invalid, or breaks the tracking plan under "
                "`mode: enforce`; `field` names it. Nothing was stored."
            },
            401: {"description": "Unknown or missing write key. Nothing was stored."},
            403: {"description": "A credential other than a write key. Nothing was stored."},
            413: {"description": "The body or a message is too large. Nothing was stored."},
            429: {"description": "Over the source's rate limit: wait `Retry-After` seconds"},
        },
        "dependencies": [Security(WRITE_KEY)],
    }


@router.post(
    "/v1/batch",
    **_openapi(
        {
            "type": "object",
            "required": ["batch"],
            "properties": {"batch": {"type": "array", "items": _message_schema(None)}},
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
        f"/v1/{kind}",
        endpoint,
        methods=["POST"],
        **_openapi(_message_schema(kind), f"Send one {kind}"),
    )


for _kind in _SINGLE_TYPES:
    _single(_kind)
