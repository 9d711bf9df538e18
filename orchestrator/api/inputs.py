"""Input no handler should see: NUL characters, JSON nested too deep, bodies too large.

Each is answered 400 (413 for size) naming the field before any handler runs (see
`json_checks`). Every router uses `GuardedRoute`; ingestion and receipts, which read
their bodies themselves, call `json_checks.problem()` on what they parsed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope

from orchestrator.api.auth import NO_CREDENTIALS, BadCredentials, challenge, identify
from orchestrator.json_checks import problem

# Management bodies (a catalogue batch of 5,000 items) stay well under this.
MAX_JSON_BODY = 4 * 1024 * 1024


def refusal(status: int, message: str, field: str = "") -> JSONResponse:
    body = {"error": message, **({"field": field} if field else {})}
    return JSONResponse(body, status_code=status)


class _ReadRequest(Request):
    """The request with its body already read and checked."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        self._checked = body

    async def body(self) -> bytes:
        return self._checked


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over `limit` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class GuardedRoute(APIRoute):
    """Refuses a request without a credential it recognises (unless the route is public,
    `security: []`), then NUL characters in the path and query, repeated and unknown
    query parameters, then checks a JSON body (size, syntax, depth, NUL) before FastAPI parses
    and validates it. Routes with a JSON body take server API keys only, so nobody else
    gets as far as having a body parsed. Scopes are the routes' own dependencies'."""

    # Ingestion finds its write key itself (it may be in the body).
    credentials_first: ClassVar[bool] = True

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        public = (self.openapi_extra or {}).get("security") == []
        check_credentials = self.credentials_first and not public
        known = _query_names(self.dependant)

        async def guarded(request: Request) -> Response:
            if check_credentials and (refused := _unrecognised(request, takes_body)):
                return refused
            query = request.query_params.multi_items()
            for name, value in [*request.path_params.items(), *query]:
                if "\x00" in name or "\x00" in str(value):
                    return refusal(400, "must not contain a NUL character", name)
            counts = Counter(name for name, _ in query)
            if (repeated := next((n for n, t in counts.items() if t > 1), None)) is not None:
                # Every parameter we take is one value: which one would be meant?
                return refusal(400, f"query parameter {repeated!r} is given more than once",
                               repeated)  # fmt: skip
            if (unknown := next((n for n in counts if n not in known), None)) is not None:
                # A misspelt filter would otherwise be ignored, and the answer misread.
                message = "is not a parameter of this route" if unknown else "has no name"
                return refusal(400, f"query parameter {unknown!r} {message}", unknown)
            if not takes_body:
                return await handler(request)
            body = await read_body(request, MAX_JSON_BODY)
            if body is None:
                return refusal(413, f"the body is over the {MAX_JSON_BODY}-byte limit")
            if body:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError as exc:
                    return refusal(400, f"the body is not valid JSON: {exc}")
                if found := problem(parsed):
                    field, message = found
                    return refusal(400, f"{field or 'the body'} {message}", field)
            return await handler(_ReadRequest(request.scope, _replay(body, request), body))

        return guarded


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route (its dependencies included) takes."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def _unrecognised(request: Request, takes_body: bool) -> Response | None:
    try:
        caller = identify(request, request.app.state.services)
    except BadCredentials as exc:
        return _challenge(str(exc))
    if caller is None:
        return _challenge(NO_CREDENTIALS)
    if takes_body and caller.key is None:
        return refusal(403, "this takes a server API key")
    return None


def _challenge(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=401, headers=challenge("bearer"))


def _replay(body: bytes, request: Request) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return receive
