"""The three kinds of credentials, as `orchestrator.yaml` declares them.

    source write keys   public by design (they ship in web pages and apps): ingestion only
    server API keys     secret, `Authorization: Bearer`, each with scopes
    user tokens         JWTs (HS256) the customer's backend mints for one user's own
                        inbox and placements (see `tokens`)

Every secret may have a `previous_secret` that is also accepted while callers rotate.
"""

from __future__ import annotations

import hmac
import re
from datetime import timedelta
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rules.durations import Duration
from workflows.spec import IDENTIFIER

Scope = Literal[
    "catalog:write",  # PUT /v1/catalog/items
    "arbitrate",  # POST /v1/arbitrate
    "users:read",  # a user's decisions, journeys, inbox and placements
    "users:write",  # mark a user's inbox and placement messages read or dismissed
    "users:erase",  # erase a user everywhere, see the erasure's state, restore after consent
    "users:export",  # everything held about a user, as one JSON document
    "journeys:read",  # deployed journeys and their funnels
    "ranking",  # POST /v1/rank
    "reports:read",  # experiment and journey reports
    "admin",  # everything above, and the audit log
]
SCOPES: tuple[Scope, ...] = get_args(Scope)

# An origin as browsers send it: scheme, host and port, nothing after.
ORIGIN = r"^https?://[^/\s]+$"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Config):
    """A token bucket: requests per second on average, and how many at once."""

    per_second: float = Field(gt=0, description="Average requests per second")
    burst: int = Field(default=1, ge=1, description="Requests allowed at once")


def _matches(presented: str, secrets: tuple[str | None, ...]) -> bool:
    # Compare with every secret, in constant time, so timing tells nothing about which.
    given = presented.encode()
    found = False
    for secret in secrets:
        if secret is not None and hmac.compare_digest(given, secret.encode()):
            found = True
    return found


class ApiKey(_Config):
    """A server API key: for backends, never for browsers or apps."""

    name: str = Field(pattern=IDENTIFIER, description="Who holds it, as the audit log names it")
    secret: str = Field(min_length=24, description="At least 24 random characters; use ${ENV}")
    previous_secret: str | None = Field(
        default=None, min_length=24, description="Still accepted while callers rotate"
    )
    scopes: list[Scope] = Field(min_length=1, description=f"Any of {', '.join(SCOPES)}")

    def matches(self, presented: str) -> bool:
        return _matches(presented, (self.secret, self.previous_secret))

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class UserTokens(_Config):
    """How apps and web pages prove which user they act for (JWT HS256, `sub` = user id)."""

    secret: str = Field(min_length=32, description="Shared with the backend that mints tokens")
    previous_secret: str | None = Field(default=None, min_length=32)
    max_ttl: Duration = Field(
        default=timedelta(days=7), description="Tokens valid for longer than this are refused"
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Web pages that may call the API with a user token"
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(per_second=10, burst=50),
        description="One user's calls per second with their tokens, per API process",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return origins(values)

    def secrets(self) -> list[str]:
        return [s for s in (self.secret, self.previous_secret) if s]


def _origin(value: str) -> str:
    if not re.match(ORIGIN, value):
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port], no path)")
    return value.lower()


def origins(values: list[str]) -> list[str]:
    """Validated, normalised origins (for pydantic validators of other models)."""
    return [_origin(v) for v in values]


def server_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The API key whose secret (or previous secret) was presented."""
    found = None
    for key in keys:
        if key.matches(presented):
            found = key
    return found
