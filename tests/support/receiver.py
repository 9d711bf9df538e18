"""A real HTTP receiver on loopback for channel systems and webhook targets.

It verifies Standard Webhooks signatures with the `standardwebhooks` library (not
our code), records every request, and answers with scripted statuses on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.stack.servers import serving


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("webhook-id")


@dataclass
class Script:
    status: int
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets  # first path segment -> secret
        self.requests: list[Received] = []
        self.url = ""
        self._scripts: dict[str, deque[Script]] = defaultdict(deque)
        self._arrived = asyncio.Condition()
        # Called with each request before it is answered (e.g. to kill a worker).
        self.on_request: Callable[[Received], None] | None = None
        # Set when a request arrives, before its script's delay: a send is under way.
        self.arriving = asyncio.Event()
        # While `hold` is set and not yet released, requests wait here unanswered
        # (`held` counts them): the senders have them in flight.
        self.hold: asyncio.Event | None = None
        self.held = 0

    def script(self, path: str, *scripts: Script) -> None:
        """Answer the next requests to `path` like this (then 200 again)."""
        self._scripts[path].extend(scripts)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> list[Received]:
        async def until() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self.requests))

        await asyncio.wait_for(until(), timeout)
        return self.requests

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        secret = self.secrets.get(path.strip("/").split("/")[0])
        verified = False
        if secret is not None:
            try:
                Webhook(secret).verify(body, dict(request.headers))
                verified = True
            except WebhookVerificationError:
                verified = False
        script = self._scripts[path].popleft() if self._scripts[path] else Script(200)
        self.arriving.set()
        if self.hold is not None and not self.hold.is_set():
            self.held += 1
            try:
                await self.hold.wait()
            finally:
                self.held -= 1
        if script.delay:
            await asyncio.sleep(script.delay)
        received = Received(path, dict(request.headers), body, verified)
        if self.on_request is not None:
            self.on_request(received)
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        if not verified and secret is not None:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if script.status >= 300:
            return JSONResponse(
                {"error": "scripted"}, status_code=script.status, headers=script.headers
            )
        return JSONResponse({"id": f"provider-{len(self.requests)}"}, status_code=script.status)


@asynccontextmanager
async def running_receiver(secrets: dict[str, str]) -> AsyncIterator[Receiver]:
    receiver = Receiver(secrets)
    app = Starlette(
        routes=[Route("/{path:path}", receiver._handle, methods=["POST", "PUT", "PATCH"])]
    )
    async with serving(app) as url:
        receiver.url = url
        yield receiver
