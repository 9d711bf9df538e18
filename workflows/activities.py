"""The journey's side effects, as Temporal activities with pinned names.

Storage and arbitration come in through the constructor (`JourneyStore`, `Arbiter`),
so this module owns the order of operations and the exactly-once rules, not the SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.base import (
    Channel,
    DeliveryError,
    DeliveryRequest,
    PermanentDeliveryError,
    Receipt,
    Rendered,
    RetryableDeliveryError,
    recipient,
)
from channels.delivery import Clock, SignedPoster, utc_now
from channels.metrics import count_message, count_retry
from channels.templates import RenderError, render
from rules.decision import Decision, SendRequest
from rules.expressions import context
from workflows.messages import (
    ArbitrateInput,
    ArbitrationResult,
    ChooseVariantInput,
    DeployedJourney,
    Profile,
    ProgressInput,
    SendInput,
    SendResult,
    UpdateProfileInput,
    WebhookInput,
    WebhookResult,
)


@dataclass(frozen=True)
class MessageRecord:
    """What the store knows about a message id."""

    status: Literal["sending", "sent", "delivered", "bounced", "failed"]
    channel: str
    status_code: int | None
    error: str | None
    content: dict[str, Any]

    @property
    def accepted(self) -> bool:
        """The provider took it (receipts may have said more since)."""
        return self.status in ("sent", "delivered", "bounced")


class JourneyStore(Protocol):
    """The persistence the journey's activities need."""

    async def load_profile(self, user_id: str) -> dict[str, Any]: ...

    async def update_traits(
        self, user_id: str, *, set: Mapping[str, Any], unset: Sequence[str]
    ) -> None: ...

    async def record_progress(self, progress: ProgressInput) -> None: ...

    async def load_version(self, journey_key: str, version: int) -> DeployedJourney: ...

    async def prepare_send(
        self, message_id: str, user_id: str
    ) -> tuple[MessageRecord | None, dict[str, Any]]:
        """In one read: what is known of the message so far, and the user's traits."""
        ...

    async def claim_message(self, request: SendInput, rendered: Rendered) -> None:
        """Record the message as sending (or count one more attempt at it)."""
        ...

    async def mark_sent(self, message_id: str, receipt: Receipt) -> None: ...

    async def choose_variant(self, choice: ChooseVariantInput) -> str:
        """The user's bandit variant: the one they were given before, or a new draw."""
        ...

    async def mark_failed(
        self, message_id: str, *, error: str, status_code: int | None, final: bool
    ) -> None: ...


class Arbiter(Protocol):
    """Central arbitration: one decision for every message before it is delivered."""

    async def arbitrate(self, request: SendRequest, *, now: datetime) -> Decision: ...

    async def withdraw(self, key: str) -> None:
        """A deferred request is no longer made: it leaves its conflict window."""
        ...


class JourneyActivities:
    """The activities a journey worker registers: `worker = Worker(activities=acts.all())`."""

    def __init__(
        self,
        *,
        store: JourneyStore,
        channels: Mapping[str, Channel],
        http: httpx.AsyncClient,
        arbiter: Arbiter,
        webhook_secret: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.channels = channels
        self.http = http
        self.arbiter = arbiter
        self.webhook_secret = webhook_secret
        self.clock = clock

    def all(self) -> list[Any]:
        return [
            self.load_profile,
            self.record_progress,
            self.load_journey_version,
            self.arbitrate_message,
            self.withdraw_message,
            self.send_message,
            self.update_profile,
            self.call_webhook,
            self.choose_variant,
        ]

    @activity.defn(name="load_profile")
    async def load_profile(self, user_id: str) -> Profile:
        return Profile(user_id=user_id, traits=await self.store.load_profile(user_id))

    @activity.defn(name="record_progress")
    async def record_progress(self, progress: ProgressInput) -> None:
        await self.store.record_progress(progress)

    @activity.defn(name="load_journey_version")
    async def load_journey_version(self, journey_key: str, version: int) -> DeployedJourney:
        return await self.store.load_version(journey_key, version)

    @activity.defn(name="arbitrate_message")
    async def arbitrate_message(self, arbitrate: ArbitrateInput) -> ArbitrationResult:
        """Ask central arbitration whether, when and on which channel the message goes
        (generation 1 journeys; generation 2 asks inside `send_message`)."""
        return await self.arbitrated(arbitrate.message, now=arbitrate.now)

    async def arbitrated(self, message: SendInput, *, now: datetime) -> ArbitrationResult:
        """Central arbitration's answer for a message, at the workflow's time `now`."""
        channels = [c for c in message.channels if c in self.channels]
        if not channels:
            return ArbitrationResult(
                action="suppress", reason="none of " + ", ".join(message.channels) + " configured"
            )
        decision = await self.arbiter.arbitrate(
            SendRequest(
                key=message.message_id,
                user_id=message.user_id,
                channels=tuple(channels),
                category=message.category,
                priority=message.priority,
                requested_at=message.requested_at or now,
                value=message.value,
                tags=tuple(message.tags),
                journey=message.journey_key,
                template=message.template_name,
            ),
            now=now,
        )
        return ArbitrationResult(
            action=decision.action,
            channel=decision.channel,
            until=decision.until,
            reason=decision.reason,
        )

    @activity.defn(name="withdraw_message")
    async def withdraw_message(self, message_id: str) -> None:
        await self.arbiter.withdraw(message_id)

    @activity.defn(name="send_message")
    async def send_message(self, request: SendInput) -> SendResult:
        """Build and deliver one message, at most once per message id.

        With `arbitrate_at` (generation 2 journeys), central arbitration decides first:
        a suppression or a deferral comes back as the outcome, and nothing is sent. A
        retry (after a provider error, or after a worker died mid-delivery) sends the
        content recorded by the first attempt, on the same channel, under the same id,
        so the provider can drop a duplicate; an attempt before any claim asks
        arbitration again, which answers the same for the same message id.
        """
        prior, traits = await self.store.prepare_send(request.message_id, request.user_id)
        if prior is not None and prior.accepted:
            return SendResult(
                message_id=request.message_id,
                outcome="delivered",
                channel=prior.channel,
                status_code=prior.status_code,
            )
        if prior is not None and prior.status == "failed":
            raise ApplicationError(
                f"message failed earlier: {prior.error}",
                type="PermanentDeliveryError",
                non_retryable=True,
            )
        if prior is None and request.arbitrate_at is not None:
            decision = await self.arbitrated(request, now=request.arbitrate_at)
            if decision.action != "send":
                return SendResult(
                    message_id=request.message_id,
                    outcome="deferred" if decision.action == "defer" else "suppressed",
                    reason=decision.reason,
                    until=decision.until,
                )
            request = request.model_copy(update={"channel": decision.channel})
        profile = Profile(user_id=request.user_id, traits=traits)
        if prior is not None:
            channel_name = prior.channel
        elif request.channel is not None:
            channel_name = request.channel
        else:
            # Journeys that started before central arbitration: first configured channel.
            available = [c for c in request.channels if c in self.channels]
            if not available:
                return SendResult(
                    message_id=request.message_id, outcome="suppressed",
                    reason="none of " + ", ".join(request.channels) + " configured",
                )  # fmt: skip
            channel_name = available[0]
        channel = self.channels[channel_name]
        metadata = _metadata(request)
        if prior is not None:
            rendered = Rendered(
                message_id=request.message_id,
                channel=channel_name,
                user_id=request.user_id,
                recipient=recipient(request.user_id, profile.traits),
                content=prior.content,
                metadata=metadata,
            )
        else:
            try:
                rendered = await channel.build(
                    DeliveryRequest(
                        message_id=request.message_id,
                        user_id=request.user_id,
                        fields=request.template[channel_name],
                        context=_send_context(request, profile),
                        metadata=metadata,
                        recommendations=request.recommendations,
                    )
                )
            except RenderError as exc:
                # Nothing went out: give back the place arbitration reserved.
                await self.store.mark_failed(
                    request.message_id, error=str(exc), status_code=None, final=True
                )
                count_message(channel_name, "failed")
                raise _failure(exc) from exc
        await self.store.claim_message(request, rendered)
        try:
            async with _heartbeats():
                receipt = await channel.deliver(rendered, idempotency_key=request.message_id)
        except DeliveryError as exc:
            final = isinstance(exc, PermanentDeliveryError)
            await self.store.mark_failed(
                request.message_id, error=str(exc), status_code=exc.status_code, final=final
            )
            count_message(channel_name, "failed") if final else count_retry(channel_name)
            raise _failure(exc) from exc
        await self.store.mark_sent(request.message_id, receipt)
        count_message(channel_name, "sent")
        return SendResult(
            message_id=request.message_id,
            outcome="delivered",
            channel=channel_name,
            status_code=receipt.status_code,
        )

    @activity.defn(name="choose_variant")
    async def choose_variant(self, choice: ChooseVariantInput) -> str:
        return await self.store.choose_variant(choice)

    @activity.defn(name="update_profile")
    async def update_profile(self, update: UpdateProfileInput) -> None:
        try:
            values = render(update.set, update.context)
        except RenderError as exc:
            raise _failure(exc) from exc
        try:
            await self.store.update_traits(update.user_id, set=values, unset=update.unset)
        except ValueError as exc:  # the store refuses the values (a profile grown too large)
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc

    @activity.defn(name="call_webhook")
    async def call_webhook(self, call: WebhookInput) -> WebhookResult:
        """Call an external system, signed; 4xx is final, timeouts and 5xx are retried."""
        if not self.webhook_secret:
            raise ApplicationError(
                "webhook steps need `webhooks.signing_secret` in orchestrator.yaml",
                type="PermanentDeliveryError",
                non_retryable=True,
            )
        try:
            url = render({"url": call.url}, call.context)["url"]
            body = render(call.body, call.context)
        except RenderError as exc:
            raise _failure(exc) from exc
        poster = SignedPoster(
            url=url, secrets=[self.webhook_secret], client=self.http, clock=self.clock
        )
        try:
            response = await poster.post(
                body, msg_id=call.request_id, method=call.method, headers=call.headers
            )
        except DeliveryError as exc:
            raise _failure(exc) from exc
        return WebhookResult(status_code=response.status_code)


HEARTBEAT_EVERY = 2.0


@asynccontextmanager
async def _heartbeats() -> AsyncIterator[None]:
    """Heartbeat while delivering, so a worker that dies mid-delivery is noticed within
    the heartbeat timeout (and the message retried) rather than the whole timeout."""
    if not activity.in_activity():
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def _metadata(request: SendInput) -> dict[str, Any]:
    return {
        "journey": request.journey_key,
        "version": request.version,
        "step": request.step,
        "template": request.template_name,
        "category": request.category,
        "tags": request.tags,
    }


def _send_context(request: SendInput, profile: Profile) -> dict[str, Any]:
    journey = {
        "key": request.journey_key,
        "version": request.version,
        "name": request.journey_name,
        "step": request.step,
    }
    return context(profile.user_id, profile.traits, request.event, journey)


def _failure(exc: DeliveryError | RenderError) -> ApplicationError:
    """What Temporal should do about a failed side effect: retry (when the provider
    said when, then) or give up. The type names are the retry policies' vocabulary."""
    if isinstance(exc, RetryableDeliveryError):
        delay = timedelta(seconds=exc.retry_after) if exc.retry_after is not None else None
        return ApplicationError(str(exc), type="RetryableDeliveryError", next_retry_delay=delay)
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
