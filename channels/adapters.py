"""The four channel adapters: render a template section, deliver it as a signed webhook."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

from channels.base import Channel, DeliveryRequest, Receipt, Rendered, recipient
from channels.delivery import Clock, SignedPoster, utc_now
from channels.templates import render


class WebhookChannel:
    """A channel whose system receives each message as a Standard Webhooks POST."""

    name: ClassVar[str]

    def __init__(
        self,
        *,
        url: str,
        secrets: Sequence[str],
        client: httpx.AsyncClient,
        timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> None:
        self.poster = SignedPoster(
            url=url, secrets=secrets, client=client, timeout=timeout, clock=clock
        )
        self.clock = clock

    def render(self, request: DeliveryRequest) -> Rendered:
        user = request.context.get("user", {})
        return Rendered(
            message_id=request.message_id,
            channel=self.name,
            user_id=request.user_id,
            recipient=recipient(request.user_id, user),
            content=render(request.fields, request.context),
            metadata=request.metadata,
        )

    async def deliver(self, rendered: Rendered, *, idempotency_key: str) -> Receipt:
        payload = {
            "type": f"message.{self.name}",
            "timestamp": self.clock().isoformat(),
            "data": {
                "message_id": rendered.message_id,
                "channel": rendered.channel,
                "recipient": rendered.recipient,
                "content": rendered.content,
                "metadata": rendered.metadata,
            },
        }
        response = await self.poster.post(payload, msg_id=idempotency_key)
        return Receipt(
            message_id=rendered.message_id,
            channel=self.name,
            status_code=response.status_code,
            accepted_at=self.clock(),
            provider_message_id=_provider_id(response),
        )


class EmailChannel(WebhookChannel):
    name: ClassVar[str] = "email"


class PushChannel(WebhookChannel):
    name: ClassVar[str] = "push"


class InAppChannel(WebhookChannel):
    name: ClassVar[str] = "in_app"


class WebChannel(WebhookChannel):
    name: ClassVar[str] = "web"


ADAPTERS: Mapping[str, type[WebhookChannel]] = {
    cls.name: cls for cls in (EmailChannel, PushChannel, InAppChannel, WebChannel)
}


def build_channels(
    endpoints: Mapping[str, Mapping[str, Any]],
    *,
    client: httpx.AsyncClient,
    clock: Clock = utc_now,
) -> dict[str, Channel]:
    """One adapter per configured channel: `{name: {url, secrets, timeout}}`."""
    return {
        name: ADAPTERS[name](
            url=cfg["url"],
            secrets=cfg["secrets"],
            client=client,
            timeout=cfg.get("timeout", 10.0),
            clock=clock,
        )
        for name, cfg in endpoints.items()
    }


def _provider_id(response: httpx.Response) -> str | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return str(value) if value is not None else None
