"""The Segment HTTP Tracking API's messages: parse, validate and normalise them.

Segment's and RudderStack's client libraries send these; every message of a request is
checked before anything is stored, and a bad one names its field (`batch[3].event`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from channels.addresses import is_one_address
from orchestrator.json_checks import Instant, problem

# Anonymous visitors' profiles are `anonymous:<anonymousId>` (`orchestrator.users.identity`).
ANONYMOUS = "anonymous:"

MessageType = Literal["track", "identify", "page", "screen", "alias", "group"]

# A device clock this far ahead is wrong: the event gets the time we received it, and
# the time it claimed is kept as `context.originalTimestamp`.
MAX_AHEAD = timedelta(hours=24)


class BadInput(Exception):
    """A request we refuse; `field` says where, `status` is 400 or 413."""

    def __init__(self, field: str, message: str, *, status: int = 400) -> None:
        self.field, self.message, self.status = field, message, status
        super().__init__(f"{field}: {message}" if field else message)


class TrackingMessage(BaseModel):
    """One message. Unknown top-level fields (integrations, _metadata, ...) are kept out."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: MessageType
    message_id: str | None = Field(default=None, alias="messageId", min_length=1, max_length=200)
    user_id: str | None = Field(default=None, alias="userId", min_length=1, max_length=200)
    anonymous_id: str | None = Field(
        default=None, alias="anonymousId", min_length=1, max_length=200
    )
    previous_id: str | None = Field(default=None, alias="previousId", min_length=1, max_length=200)
    group_id: str | None = Field(default=None, alias="groupId", min_length=1, max_length=200)
    event: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: Instant | None = None

    @field_validator("user_id", "anonymous_id", "previous_id", "group_id", mode="before")
    @classmethod
    def _identifier(cls, value: Any) -> Any:
        # Some libraries send numeric ids; Segment treats them as strings.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


@dataclass(slots=True)
class Incoming:
    """A validated message, ready to store."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime


def parse_message(
    raw: Any,
    *,
    where: str,
    implied_type: str | None,
    max_bytes: int,
    now: datetime,
    nul_free: bool = False,
) -> Incoming:
    """Validate one message; raise BadInput naming the field. `nul_free`: the text it
    was parsed from cannot hold a NUL (`orchestrator.json_checks.nul_free`)."""
    if not isinstance(raw, dict):
        raise BadInput(where, "each message must be a JSON object")
    if found := problem(raw, nul_free=nul_free):
        field, message = found
        raise BadInput(_at(where, field), message)
    size = len(orjson.dumps(raw, default=str))
    if size > max_bytes:
        raise BadInput(where, f"message is {size} bytes; the limit is {max_bytes}", status=413)
    data = raw
    if implied_type is not None:
        given = data.get("type", implied_type)
        if given != implied_type:
            raise BadInput(_at(where, "type"), f"must be '{implied_type}' on this endpoint")
        data = {**raw, "type": implied_type}
    try:
        msg = TrackingMessage.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        raise BadInput(_at(where, field), err["msg"]) from None
    if msg.type == "track" and not msg.event:
        raise BadInput(_at(where, "event"), "a track call needs an event name")
    if msg.type == "alias":
        if not msg.previous_id:
            raise BadInput(_at(where, "previousId"), "an alias call needs previousId")
        if not msg.user_id:
            raise BadInput(_at(where, "userId"), "an alias call needs userId")
    elif not msg.user_id and not msg.anonymous_id:
        raise BadInput(_at(where, "userId"), "give userId or anonymousId")
    if msg.user_id is not None and msg.user_id.startswith(ANONYMOUS):
        raise BadInput(
            _at(where, "userId"),
            f"user ids may not start with {ANONYMOUS!r}: it names anonymous visitors' profiles",
        )
    if msg.type == "group" and not msg.group_id:
        raise BadInput(_at(where, "groupId"), "a group call needs groupId")
    name = msg.event if msg.type == "track" else msg.name
    traits_at = "traits" if msg.traits else "context.traits"
    traits = msg.traits or msg.context.get("traits") or {}
    traits = traits if isinstance(traits, dict) else {}
    if msg.type != "group":
        _check_traits(traits, _at(where, traits_at))
    context, timestamp = msg.context, msg.timestamp or now
    if timestamp > now + MAX_AHEAD:
        context = {**context, "originalTimestamp": timestamp.isoformat()}
        timestamp = now
    return Incoming(
        message_id=msg.message_id or _derived_id(raw),
        type=msg.type,
        event=name,
        user_id=msg.user_id,
        anonymous_id=msg.anonymous_id,
        previous_id=msg.previous_id,
        properties=msg.properties,
        traits=dict(traits),
        context=context,
        timestamp=timestamp,
    )


def parse_request(
    body: Any,
    *,
    implied_type: str | None,
    max_event_bytes: int,
    now: datetime,
    nul_free: bool = False,
) -> list[Incoming]:
    """A `/v1/batch` body (`{"batch": [...]}`) or a single-message body."""
    if not isinstance(body, dict):
        raise BadInput("", "the body must be a JSON object")
    if implied_type is None:
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise BadInput("batch", "must be a list of messages")
        return [
            parse_message(m, where=f"batch[{i}]", implied_type=None,
                          max_bytes=max_event_bytes, now=now, nul_free=nul_free)
            for i, m in enumerate(batch)
        ]  # fmt: skip
    return [
        parse_message(body, where="", implied_type=implied_type,
                      max_bytes=max_event_bytes, now=now, nul_free=nul_free)
    ]  # fmt: skip


def _check_traits(traits: dict[str, Any], where: str) -> None:
    """Traits that channels and policies read must be what they expect."""
    email = traits.get("email")
    if email is not None and not is_one_address(email):
        raise BadInput(f"{where}.email", "must be one email address")
    timezone = traits.get("timezone")
    if timezone is not None and not _is_zone(timezone):
        raise BadInput(f"{where}.timezone", "must be an IANA time zone name, like Europe/Paris")


def _is_zone(name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _at(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def _derived_id(raw: dict[str, Any]) -> str:
    # No messageId: derive one from the content, so that a retried request is still
    # recognised (sentAt changes between retries and is left out).
    content = {k: v for k, v in raw.items() if k not in ("sentAt", "writeKey")}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    return "derived-" + digest.hexdigest()[:40]
