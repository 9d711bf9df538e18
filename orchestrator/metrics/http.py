"""Every API request counted by route template, method and status, and timed.

The route label is the matched route's template (`/v1/users/{user_id}/inbox`), never the
path itself, so no user id or message id becomes a label value; a path no route matches
counts as `unmatched`.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "orchestrator_http_requests",
    "API requests by route template, method and status code",
    ["route", "method", "status"],
)
SECONDS = Histogram(
    "orchestrator_http_request_duration_seconds",
    "API request latency, from the request's arrival to the end of its answer",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Clients choose the method: any other counts as `other`, so labels stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(template, method, str(status)).inc()
            SECONDS.labels(template, method).observe(time.perf_counter() - started)
