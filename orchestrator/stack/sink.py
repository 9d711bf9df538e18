"""The local webhook sink of `orchestrator dev`: stands in for every channel system.

It verifies each message's Standard Webhooks signature with the secret from
`orchestrator.yaml`, prints one line per message, and drops duplicates by webhook-id
as a real receiver should.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from channels.signing import SignatureError, verify
from orchestrator.workspace import WorkspaceConfig

Printer = Callable[[str], None]


def create_sink(config: WorkspaceConfig, *, echo: Printer = print) -> Starlette:
    """A Starlette app accepting POSTs at `/<channel>` (and any path for webhook steps)."""
    secrets = {name.value: endpoint.secrets() for name, endpoint in config.channels.items()}
    hook_secrets = [config.webhooks.signing_secret] if config.webhooks else []
    seen: OrderedDict[str, None] = OrderedDict()

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        first = request.url.path.strip("/").split("/")[0]
        try:
            msg_id = verify(
                secrets.get(first, hook_secrets),
                headers=request.headers,
                body=body,
                now=datetime.now(UTC),
            )
        except SignatureError as exc:
            echo(f"[sink] {request.url.path}: REJECTED, {exc}")
            return JSONResponse({"error": str(exc)}, status_code=401)
        if msg_id in seen:
            echo(f"[sink] {request.url.path}: duplicate {msg_id} dropped")
            return JSONResponse({"id": msg_id, "duplicate": True})
        seen[msg_id] = None
        if len(seen) > 10_000:
            seen.popitem(last=False)
        echo(f"[sink] {describe(first, json.loads(body or b'{}'))}")
        return JSONResponse({"id": msg_id})

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST", "PUT", "PATCH"])])


def describe(channel: str, payload: dict[str, Any]) -> str:
    """One line a person can read: channel, user, headline, where it came from."""
    data = payload.get("data")
    if not isinstance(data, dict):
        return f"{channel}: {json.dumps(payload)[:200]}"
    content = data.get("content", {})
    headline = content.get("subject") or content.get("title") or content.get("body") or ""
    meta = data.get("metadata", {})
    user = data.get("recipient", {}).get("user_id", "?")
    origin = f"{meta.get('journey')}/{meta.get('step')} v{meta.get('version')}"
    return f"{channel:<7} → {user}: {headline!r}  ({origin}, signed ✓)"
