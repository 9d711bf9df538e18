"""The local webhook sink of `orchestrator dev`: stands in for every channel system.

It verifies each message's Standard Webhooks signature with the secret from
`orchestrator.yaml`, prints one line per message, and drops duplicates by webhook-id
as a real receiver should. Given the API's URL, it then answers email and push
messages with a signed `delivered` receipt, as an ESP or push provider would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from channels.base import DeliveryError
from channels.delivery import SignedPoster
from channels.signing import SignatureError, verify
from orchestrator.workspace import WorkspaceConfig

Printer = Callable[[str], None]


RECEIPT_DELAY = 0.5


def create_sink(
    config: WorkspaceConfig, *, echo: Printer = print, receipts_to: str | None = None
) -> Starlette:
    """A Starlette app accepting POSTs at `/<channel>` (and any path for webhook steps);
    with `receipts_to` (the API's URL), email and push messages get delivery receipts."""
    secrets = {name.value: endpoint.secrets() for name, endpoint in config.channels.items()}
    hook_secrets = [config.webhooks.signing_secret] if config.webhooks else []
    seen: OrderedDict[str, None] = OrderedDict()
    pending: set[asyncio.Task[None]] = set()

    async def send_receipt(channel: str, message_id: str) -> None:
        await asyncio.sleep(RECEIPT_DELAY)
        body = {
            "type": "delivered",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {"message_id": message_id},
        }
        poster = SignedPoster(
            url=f"{receipts_to}/v1/webhooks/receipts/{channel}",
            secrets=secrets[channel][:1],
            client=client,
        )
        try:
            response = await poster.post(body, msg_id=f"rcpt_{message_id}_delivered")
            echo(
                f"[sink] {channel:<7} ← receipt delivered for {message_id}: {response.status_code}"
            )
        except DeliveryError as exc:
            echo(f"[sink] {channel:<7} ← receipt for {message_id} refused: {exc}")

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
        payload = json.loads(body or b"{}")
        echo(f"[sink] {describe(first, payload)}")
        if receipts_to and first in ("email", "push"):
            task = asyncio.create_task(send_receipt(first, payload["data"]["message_id"]))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return JSONResponse({"id": msg_id})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        for task in list(pending):
            task.cancel()
        await client.aclose()

    client = httpx.AsyncClient(timeout=5)
    return Starlette(
        routes=[Route("/{path:path}", receive, methods=["POST", "PUT", "PATCH"])],
        lifespan=lifespan,
    )


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
