"""The four channel adapters: fill ranked content, render the template section within
the channel's limits, deliver as a signed webhook (in-app and web also store it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import httpx

from channels.addresses import is_one_address
from channels.base import (
    Channel,
    DeliveryRequest,
    MessageBox,
    PermanentDeliveryError,
    Receipt,
    Rendered,
    recipient,
)
from channels.delivery import Clock, SignedPoster, utc_now
from channels.ranking import Recommender
from channels.templates import SECTIONS, RenderError, fit, render_section
from channels.unsubscribe import Unsubscribe, UnsubscribeLinks
from rules.durations import parse_duration


@dataclass(frozen=True)
class ChannelDeps:
    """What the adapters of one worker process share."""

    box: MessageBox
    links: UnsubscribeLinks | None = None  # signs email's unsubscribe links
    recommender: Recommender | None = None
    clock: Clock = utc_now


class WebhookChannel:
    """A channel whose system receives each message as a Standard Webhooks POST."""

    name: ClassVar[str]

    def __init__(self, *, poster: SignedPoster | None, deps: ChannelDeps) -> None:
        self.poster, self.deps = poster, deps
        self.recommender, self.clock = deps.recommender, deps.clock

    async def build(self, request: DeliveryRequest) -> Rendered:
        user = request.context.get("user", {})
        context, source = self.context(request), None
        if request.recommendations is not None:
            if self.recommender is None:
                raise RenderError("content", "this worker has no recommender for ranked content")
            filled = await self.recommender.recommend(
                request.user_id, user, request.recommendations,
                context={"event": request.context.get("event") or {}},
                message_id=request.message_id,
            )  # fmt: skip
            context = {**context, "recommendations": filled.items}
            source = filled.record()
        content = fit(self.name, render_section(request.fields, context))
        return Rendered(
            message_id=request.message_id,
            channel=self.name,
            user_id=request.user_id,
            # Whether the user is reachable (an address, device tokens) is arbitration's
            # call (policy `reachability`); some providers address users by id alone.
            recipient=recipient(request.user_id, user),
            content=self.finish(content, context),
            metadata=request.metadata,
            content_source=source,
        )

    def context(self, request: DeliveryRequest) -> dict[str, Any]:
        """What the templates see; adapters add their own variables."""
        return dict(request.context)

    def finish(self, content: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """The content as the channel system receives it (`context` is what rendered it)."""
        return content

    async def deliver(self, rendered: Rendered, *, idempotency_key: str) -> Receipt:
        if self.poster is None:
            raise PermanentDeliveryError(f"no {self.name} endpoint is configured")
        return await self.post(rendered, idempotency_key)

    async def post(self, rendered: Rendered, idempotency_key: str) -> Receipt:
        assert self.poster is not None
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
        response = await self.poster.post(
            payload, msg_id=idempotency_key, headers={"idempotency-key": idempotency_key}
        )
        return Receipt(
            message_id=rendered.message_id,
            channel=self.name,
            status_code=response.status_code,
            accepted_at=self.clock(),
            provider_message_id=_provider_id(response),
        )


class EmailChannel(WebhookChannel):
    """Email through the ESP, with a signed one-click `List-Unsubscribe` (RFC 8058)."""

    name: ClassVar[str] = "email"

    def __init__(self, *, poster: SignedPoster | None, deps: ChannelDeps) -> None:
        if deps.links is None:
            raise ValueError("email needs unsubscribe links: set links.signing_secret")
        super().__init__(poster=poster, deps=deps)
        self.links = deps.links

    async def build(self, request: DeliveryRequest) -> Rendered:
        email = request.context.get("user", {}).get("email")
        if email is not None and not is_one_address(email):
            # Ingestion refuses such a trait, but a journey's `update_profile` can still
            # set one; a line break in it would reach the ESP's headers.
            raise RenderError("recipient.email", "the user's email trait is not one address")
        return await super().build(request)

    def _unsubscribe_url(self, request: DeliveryRequest) -> str:
        category = str(request.metadata.get("category") or "*")
        what = Unsubscribe(request.user_id, self.name, category, request.message_id)
        return self.links.url(what)

    def context(self, request: DeliveryRequest) -> dict[str, Any]:
        return {**request.context, "unsubscribe_url": self._unsubscribe_url(request)}

    def finish(self, content: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        url = context["unsubscribe_url"]
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        return {**content, "unsubscribe_url": url, "headers": headers}


class PushChannel(WebhookChannel):
    """Push through the push provider, to every device token on the profile."""

    name: ClassVar[str] = "push"


class StoredChannel(WebhookChannel):
    """In-app and web: stored for the app or website to fetch, and posted to the
    channel system too when an endpoint is configured."""

    def finish(self, content: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        default = SECTIONS[self.name].model_fields["expires_after"].default
        given = content.pop("expires_after", None)
        expires_after = parse_duration(given) if given is not None else default
        expires_at = self.clock() + expires_after
        return {**content, "expires_at": expires_at.isoformat()}

    async def deliver(self, rendered: Rendered, *, idempotency_key: str) -> Receipt:
        expires_at = datetime.fromisoformat(rendered.content["expires_at"])
        await self.deps.box.put(rendered, expires_at=expires_at)
        if self.poster is not None:
            return await self.post(rendered, idempotency_key)
        return Receipt(
            message_id=rendered.message_id,
            channel=self.name,
            status_code=None,
            accepted_at=self.clock(),
        )


class InAppChannel(StoredChannel):
    name: ClassVar[str] = "in_app"


class WebChannel(StoredChannel):
    name: ClassVar[str] = "web"


ADAPTERS: Mapping[str, type[WebhookChannel]] = {
    cls.name: cls for cls in (EmailChannel, PushChannel, InAppChannel, WebChannel)
}


def build_channels(
    posters: Mapping[str, SignedPoster | None], deps: ChannelDeps
) -> dict[str, Channel]:
    """One adapter per configured channel; a channel without a poster only stores."""
    return {name: ADAPTERS[name](poster=poster, deps=deps) for name, poster in posters.items()}


def _provider_id(response: httpx.Response) -> str | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return str(value) if value is not None else None
