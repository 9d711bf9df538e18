"""An external ranking model on loopback whose answers a test scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.stack.servers import serving


@dataclass
class ModelServer:
    url: str = ""
    items: list[str] = field(default_factory=list)
    confidence: float = 0.9
    delay: float = 0.0
    status: int = 200
    body: Any = None  # answer this instead of a ranking
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.requests.append(json.loads(await request.body()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return JSONResponse({"error": "scripted"}, status_code=self.status)
        if self.body is not None:
            return JSONResponse(self.body)
        scored = [{"item_id": i, "score": 1.0 - n / 100} for n, i in enumerate(self.items)]
        return JSONResponse({"items": scored, "confidence": self.confidence, "model": "test-v1"})


@asynccontextmanager
async def running_model() -> AsyncIterator[ModelServer]:
    model = ModelServer()
    app = Starlette(routes=[Route("/rank", model.handle, methods=["POST"])])
    async with serving(app) as url:
        model.url = f"{url}/rank"
        yield model
