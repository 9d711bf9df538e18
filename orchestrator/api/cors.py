"""CORS for the two things browsers call: ingestion and a user's own inbox and placements.

A page on another origin may send events if some source lists that origin in its
`allowed_origins`, and may call the inbox and placement routes with a user token if
`user_tokens.allowed_origins` lists it. Preflights from any other origin, or for any
other route, are refused, and no other response carries CORS headers.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.workspace import WorkspaceConfig

INGESTION = re.compile(r"^/v1/(batch|track|identify|page|screen|alias|group)$")
USER_ROUTES = re.compile(r"^/v1/users/[^/]+/(inbox|placements)(/.*)?$")
ALLOWED_HEADERS = "authorization, content-type, content-encoding"
MAX_AGE = "600"  # seconds a browser may cache a preflight answer


class Cors:
    """ASGI middleware: answers preflights and marks responses for allowed origins."""

    def __init__(self, app: ASGIApp, config: WorkspaceConfig) -> None:
        self.app = app
        self.ingestion = {o for s in config.sources for o in s.allowed_origins}
        self.users = set(config.user_tokens.allowed_origins) if config.user_tokens else set()

    def _allowed(self, path: str) -> tuple[set[str], str]:
        if INGESTION.match(path):
            return self.ingestion, "POST"
        if USER_ROUTES.match(path):
            return self.users, "GET, POST"
        return set(), ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        origins, methods = self._allowed(scope["path"])
        allowed = origin.lower() in origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(origin, allowed, methods, headers)(scope, receive, send)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, marked)


def _preflight(origin: str, allowed: bool, methods: str, headers: Headers) -> Response:
    method = headers["access-control-request-method"].upper()
    asked = headers.get("access-control-request-headers", "")
    wanted = {h.strip().lower() for h in asked.split(",")} - {""}
    if not allowed or method not in methods.split(", "):
        return JSONResponse({"error": "this origin may not call this route"}, status_code=403)
    if not wanted.issubset(ALLOWED_HEADERS.split(", ")):
        return JSONResponse({"error": "these request headers are not allowed"}, status_code=403)
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": methods,
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": MAX_AGE,
            "vary": "Origin",
        },
    )
