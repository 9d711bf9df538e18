"""The facts the product publishes, as versioned JSON documents (`orchestrator events
schema` exports their JSON Schemas).

Every record is an envelope: a stable `id` (a consumer that sees one twice has seen the
same fact), its `type`, the schema `version`, when it happened, the user it is about
(also the record's key) and `data`, whose shape the type decides. The outbox triggers
(migration 0014) build `data`; these models say what it holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VERSION = 1


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageDone(_Data):
    """`message.sent` (the provider accepted it) or `message.failed` (it gave up)."""

    message_id: str
    journey: str
    version: int
    step: str
    channel: str
    template: str
    category: str | None
    error: str | None


class MessageReceipt(_Data):
    """What a channel system reported about a message (the receipt as it came)."""

    message_id: str
    channel: str
    receipt: dict[str, Any]


class DecisionMade(_Data):
    """One arbitration decision, with every check that was made."""

    request: str = Field(description="The request's idempotency key (a journey's message id)")
    journey: str | None
    action: Literal["send", "defer", "suppress"]
    channel: str | None
    until: datetime | None
    reason: str
    checks: list[dict[str, Any]]


class JourneyEntered(_Data):
    enrollment_id: int
    journey: str
    version: int
    instance: str = Field(description="A keyed journey's key; '' otherwise")
    held_out: bool


class JourneyEnded(_Data):
    enrollment_id: int
    journey: str
    version: int
    instance: str
    status: Literal["completed", "exited", "converted"]
    reason: str | None


class JourneyConverted(_Data):
    enrollment_id: int
    journey: str
    version: int
    instance: str
    value: float | None
    held_out: bool


class JourneyStep(_Data):
    """A step a user went through, once it had its outcome."""

    enrollment_id: int
    step: str
    kind: str
    visit: int
    outcome: str


class AssignmentMade(_Data):
    """A user's arm in a holdout, an experiment, a bandit or the global control group."""

    journey: str
    version: int | None
    kind: str
    experiment: str
    mode: str
    arm: str
    propensity: float | None
    enrollment_id: int | None


class UserMerged(_Data):
    """The profile `merged_from` (an anonymous visitor's `anonymous:<anonymousId>`, or a
    user aliased to this one) counts for the record's user from now on: its data moved."""

    merged_from: str


RECEIPTS = ("delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")
KINDS: dict[str, type[_Data]] = {
    "message.sent": MessageDone,
    "message.failed": MessageDone,
    **{f"message.{kind}": MessageReceipt for kind in RECEIPTS},
    "decision.made": DecisionMade,
    "journey.entered": JourneyEntered,
    "journey.ended": JourneyEnded,
    "journey.converted": JourneyConverted,
    "journey.step": JourneyStep,
    "assignment.made": AssignmentMade,
    "user.merged": UserMerged,
}


def envelope(
    fact: str, kind: str, user_id: str | None, occurred_at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": fact,
        "type": kind,
        "version": VERSION,
        "occurred_at": occurred_at.isoformat(),
        "user_id": user_id,
        "data": data,
    }


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one type's records (envelope and data)."""
    data = KINDS[kind].model_json_schema()
    definitions = data.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:journey-orchestrator:facts:{kind}:v{VERSION}",
        "title": kind,
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "version", "occurred_at", "user_id", "data"],
        "properties": {
            "id": {"type": "string", "description": "Stable: the same fact has the same id"},
            "type": {"const": kind},
            "version": {"const": VERSION},
            "occurred_at": {"type": "string", "format": "date-time"},
            "user_id": {"type": ["string", "null"]},
            "data": data,
        },
        **({"$defs": definitions} if definitions else {}),
    }
