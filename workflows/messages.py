"""What travels through Temporal: workflow inputs, signals, state, activity inputs and results.

Payloads stay small (ids and the few properties conditions need), because every
wake-up of a long wait replays the history that holds them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from channels.ranking import Recommendations
from workflows.spec import Journey

Status = Literal["running", "waiting", "completed", "exited", "converted", "failed"]
ENDED: frozenset[str] = frozenset({"completed", "exited", "converted", "failed"})


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class EventSignal(Message):
    """An event a journey hears about: the trigger, or one it waits for, exits on or converts on."""

    message_id: str
    name: str
    properties: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime


class DeployedJourney(Message):
    """One immutable deployed version: the journey and the templates its sends use."""

    key: str
    version: int
    spec: Journey
    templates: dict[str, dict[str, dict[str, Any]]] = Field(
        description="template name -> channel -> raw fields"
    )


class EnterSignal(Message):
    """Sent with signal-with-start: which enrollment this start is for."""

    enrollment_id: int
    version: int
    trigger: EventSignal
    installation_id: UUID | None = Field(
        default=None, description="The starter's installation: a re-entry's message ids use it"
    )


class MigrateSignal(Message):
    """A newer version of the journey takes in the users of this one (its `migrate`)."""

    version: int


# Why a journey ends when its user was merged into one already running it.
MERGED = "merged: the user already runs this journey"


class IdentifiedSignal(Message):
    """The user this journey runs for was merged into another (identify or alias)."""

    user_id: str = Field(description="The user the journey runs for from now on")
    merged_from: str = Field(description="The id it ran for until now")
    ends: bool = Field(
        default=False, description="That user already runs this journey: this one ends"
    )


# How an experiment step's visit records the variant drawn: "variant <name>".
VARIANT_OUTCOME = "variant "


class StepVisit(BaseModel):
    step: str
    kind: str
    visit: int
    at: datetime
    outcome: str | None = None


class HeardEvent(BaseModel):
    """An event a `wait_for` of the journey may want, as the workflow heard it."""

    seq: int = Field(description="1 for the first event heard, counting on across waits")
    at: datetime
    event: EventSignal


class JourneyState(BaseModel):
    """Everything the workflow knows; returned by the `state` query, carried by continue-as-new."""

    status: Status = "running"
    step: str
    step_started: bool = False
    wake_at: datetime | None = None
    waiting_for: str | None = None
    visits: dict[str, int] = Field(default_factory=dict)
    recent_steps: list[StepVisit] = Field(default_factory=list)
    unrecorded: list[StepVisit] = Field(default_factory=list)
    assignments: dict[str, str] = Field(default_factory=dict)
    last_event: EventSignal | None = None
    pending: list[EventSignal] = Field(default_factory=list)
    heard: list[HeardEvent] = Field(default_factory=list, description="Recent, for `wait_for`")
    heard_count: int = 0
    wait_mark: int = Field(default=0, description="`heard_count` when the last wait ended")
    seen_event_ids: list[str] = Field(default_factory=list)
    messages_sent: int = 0
    converted_at: datetime | None = None
    end_reason: str | None = None
    deferred: str | None = Field(default=None, description="Why a send is waiting")
    migrate_to: int | None = Field(
        default=None, description="A newer version asked for this user; moves at a safe point"
    )
    runs: int = 1
    user_id: str | None = Field(
        default=None,
        description="Who the journey runs for since the user it entered as was merged",
    )
    identified: IdentifiedSignal | None = Field(
        default=None, description="A merge to follow at the next safe point"
    )


# How a journey runs, recorded in its input so a replay takes the path its history did:
#   1  arbitration in its own local activity before each send; search attributes
#      upserted at every step and status change
#   2  arbitration inside the send activity (a deferral comes back from it and the
#      workflow sleeps on a durable timer); search attributes upserted together where
#      the user comes to rest (a wait, a deferral, the end); no version markers
GENERATION = 2


class JourneyInput(Message):
    journey: DeployedJourney
    user_id: str
    enrollment_id: int
    entered_at: datetime
    trigger: EventSignal
    default_timezone: str = "UTC"
    carried: JourneyState | None = None
    # Continue-as-new once history passes this many events (Temporal also suggests it).
    history_limit: int = 2000
    # The namespace of message ids, unique per installation (database), so that ids never
    # repeat after a reset restarts enrollment ids. None in inputs recorded before it
    # existed: those journeys keep the old, shared namespace and so replay unchanged.
    installation_id: UUID | None = None
    # Variants decided before entry (experiment or template-variant key -> name): a
    # journey test forces an arm with them.
    assignments: dict[str, str] = Field(default_factory=dict)
    instance: str = Field(default="", description="A keyed journey's key ('' when unkeyed)")
    # Inputs recorded before generations existed are generation 1.
    generation: int = 1


class JourneyResult(Message):
    status: Status
    end_reason: str | None
    steps: int
    messages_sent: int


# ---- activities ------------------------------------------------------------


class Profile(Message):
    user_id: str
    traits: dict[str, Any] = Field(default_factory=dict)


class ProgressInput(Message):
    """Step visits to store, and the enrollment's new status when it ended."""

    enrollment_id: int
    visits: list[StepVisit]
    current_step: str | None
    status: Status | None = None
    end_reason: str | None = None
    ended_at: datetime | None = None
    converted_at: datetime | None = None
    version: int | None = Field(default=None, description="The journey version the user is on")


class SendInput(Message):
    message_id: str
    enrollment_id: int
    journey_key: str
    version: int
    journey_name: str
    category: str
    priority: int
    user_id: str
    step: str
    channels: list[str]
    template_name: str
    template: dict[str, dict[str, Any]]
    tags: list[str] = Field(default_factory=list)
    value: float | None = None
    event: EventSignal | None = None
    requested_at: datetime | None = None
    channel: str | None = Field(default=None, description="Chosen by arbitration")
    recommendations: Recommendations | None = None
    # Generation 2: the workflow's time at the send; the activity asks arbitration
    # first (unless an earlier attempt claimed the message).
    arbitrate_at: datetime | None = None


class ArbitrateInput(Message):
    message: SendInput
    now: datetime = Field(description="The workflow's time: deferrals are timers on it")


class ArbitrationResult(Message):
    action: Literal["send", "defer", "suppress"]
    channel: str | None = None
    until: datetime | None = None
    reason: str


class ChooseVariantInput(Message):
    journey_key: str
    experiment_key: str
    user_id: str
    enrollment_id: int
    variants: list[str]
    min_share: float
    # click_on_variant: a click on a message sent with the variant's template
    reward: Literal["goal", "click", "click_on_variant"]
    # What is drawn: an experiment step's variant, or a send's template.
    kind: Literal["experiment", "template"] = "experiment"


class SendResult(Message):
    message_id: str
    outcome: Literal["delivered", "suppressed", "deferred"]
    channel: str | None = None
    reason: str | None = None
    status_code: int | None = None
    until: datetime | None = Field(default=None, description="Deferred: when to ask again")


class AdoptInput(Message):
    """Move to `target` whatever was written under `source` since they were merged."""

    source: str
    target: str


class UpdateProfileInput(Message):
    user_id: str
    set: dict[str, Any]
    unset: list[str]
    context: dict[str, Any]


class WebhookInput(Message):
    request_id: str
    url: str
    method: str
    body: dict[str, Any]
    headers: dict[str, str]
    context: dict[str, Any]


class WebhookResult(Message):
    status_code: int
