"""The channel seam: build a message for one user (ranked content, templates), then
deliver it.

DeliveryError
├── RetryableDeliveryError   timeouts, connection errors, 5xx, 429: try again later
└── PermanentDeliveryError   any other 4xx: the provider refused this message
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from channels.ranking import Recommendations


class DeliveryRequest(BaseModel):
    """Everything a channel needs to build one message."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    user_id: str
    fields: dict[str, Any] = Field(description="The template section for this channel")
    context: dict[str, Any] = Field(description="user, event and journey, for rendering")
    metadata: dict[str, Any] = Field(default_factory=dict, description="journey, step, tags")
    recommendations: Recommendations | None = None


class Rendered(BaseModel):
    """A message ready to deliver: rendered content plus where it came from."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    channel: str
    user_id: str
    recipient: dict[str, Any]
    content: dict[str, Any]
    metadata: dict[str, Any]
    content_source: dict[str, Any] | None = Field(
        default=None, description="Which source filled the recommendations, and why"
    )


class Receipt(BaseModel):
    """The channel system accepted the message."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    channel: str
    status_code: int | None = Field(description="The provider's answer; None when only stored")
    accepted_at: datetime
    provider_message_id: str | None = None


class DeliveryError(Exception):
    """Delivery did not succeed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class RetryableDeliveryError(DeliveryError):
    """Worth trying again: the provider is slow, down, or asked us to back off."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status_code=status_code)


class PermanentDeliveryError(DeliveryError):
    """The provider refused the message; retrying will not help."""


class Channel(Protocol):
    """One outbound channel. Adapters are registered explicitly, never discovered."""

    name: ClassVar[str]

    async def build(self, request: DeliveryRequest) -> Rendered: ...

    async def deliver(self, rendered: Rendered, *, idempotency_key: str) -> Receipt: ...


# The traits that say where a message goes (ingestion takes them from server-side
# sources only: whoever sets them receives the user's messages).
ADDRESSES = ("email", "phone", "device_tokens")


def recipient(user_id: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """The addressing traits a channel system needs, and nothing else from the profile."""
    wanted = (*ADDRESSES, "locale", "timezone")
    return {"user_id": user_id, **{k: user[k] for k in wanted if user.get(k) is not None}}


class MessageBox(Protocol):
    """Where in-app and web messages wait for the app or website to fetch them."""

    async def put(self, rendered: Rendered, *, expires_at: datetime) -> None:
        """Store the message; storing the same message id again changes nothing."""
        ...
