"""The journey format: what a marketer writes in `journeys/*.yaml`, as pydantic models.

A journey is a trigger, an optional audience and a graph of steps keyed by id. Each
step is a mapping with exactly one kind key (`wait`, `wait_for`, `branch`,
`experiment`, `send`, `update_profile`, `webhook`, `exit`) and, unless it ends the
journey or names its successors itself, a `next`. Unknown keys are errors, so a typo
is reported at its line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from channels.ranking import Recommendations
from rules.durations import (
    DURATION_SCHEMA,
    Duration,
    DurationError,
    format_duration,
    parse_duration,
)
from rules.expressions import JOURNEY_NAMES, Missing, condition_over, evaluate
from rules.local_time import TimeOfDay

IDENTIFIER = r"^[a-z][a-z0-9_]{0,63}$"
MAX_INSTANCE = 200

Condition = Annotated[
    str,
    condition_over(JOURNEY_NAMES),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A Jinja2 expression over user, event and journey",
            "examples": ["user.country == 'GB'", "event.properties.total > 50"],
        }
    ),
]
"""A Jinja2 expression over `user`, `event` and `journey`."""

StepId = Annotated[str, Field(pattern=IDENTIFIER)]


class Strict(BaseModel):
    """Every journey model refuses unknown keys and is immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelName(StrEnum):
    email = "email"
    push = "push"
    in_app = "in_app"
    web = "web"


class Category(StrEnum):
    promotional = "promotional"
    transactional = "transactional"
    service = "service"


SEGMENT_EVENTS = ("Segment Entered", "Segment Exited")
# What an audience journey's users enter on (their `event` in conditions and templates).
AUDIENCE_EVENT = "Audience Run"


_Matching = TypeVar("_Matching", bound=BaseModel)


def _segment_event(model: _Matching) -> _Matching:
    """`segment` names which segment's entries or exits an event match counts."""
    segment, event = getattr(model, "segment", None), getattr(model, "event", None)
    if segment is not None and event not in SEGMENT_EVENTS:
        raise ValueError(f"`segment` goes with event {' or '.join(map(repr, SEGMENT_EVENTS))}")
    return model


def in_segment(segment: str | None, properties: dict[str, Any]) -> bool:
    """Whether a segment event is about `segment` (any event is, when it names none)."""
    return segment is None or properties.get("segment") == segment


class Schedule(Strict):
    """When an audience journey runs: once, or on a cron schedule, in the workspace's
    time zone unless it names another."""

    at: datetime | None = Field(default=None, description="Once, at this local date and time")
    cron: str | None = Field(
        default=None, description="Five cron fields: minute hour day month weekday",
        examples=["0 9 * * MON"],
    )  # fmt: skip
    timezone: str | None = Field(default=None, description="IANA name; default: the workspace's")

    @model_validator(mode="after")
    def _one_form(self) -> Schedule:
        if (self.at is None) == (self.cron is None):
            raise ValueError("give `at` (once) or `cron` (repeating)")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"{self.cron!r} is not a cron schedule of five fields")
        if self.timezone is not None:
            _check_zone(self.timezone)
        return self


def _rate(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*", value)
        if not match:
            raise ValueError(f"{value!r} is not a rate: write it like 500/s, 100/m or 1000/h")
        return float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    return value


Rate = Annotated[
    float,
    BeforeValidator(_rate),
    Field(gt=0, le=100_000),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?/(s|m|h)$", "examples": ["500/s"]}),
]


class Audience(Strict):
    """Enter every member of a segment when the schedule says, at a bounded rate."""

    segment: str = Field(pattern=IDENTIFIER)
    schedule: Schedule
    entry_rate: Rate = Field(default=100.0, description="Users entered per second at most")


class Trigger(Strict):
    """What enters a user: an event (with an optional condition on it; a segment's
    entries with `segment`), or being in a segment when an audience journey runs."""

    event: str | None = Field(default=None, min_length=1, max_length=200)
    segment: str | None = Field(default=None, pattern=IDENTIFIER)
    when: Condition | None = None
    audience: Audience | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Trigger:
        if (self.event is None) == (self.audience is None):
            raise ValueError("give `event` (users enter when it happens) or `audience`")
        if self.audience is not None and self.when is not None:
            raise ValueError("an audience trigger has no event for `when`: use `audience:` "
                             "at the top of the journey")  # fmt: skip
        return _segment_event(self)


class ReEntryAfter(Strict):
    after: Duration


ReEntry = Literal["never", "always"] | ReEntryAfter


ANY_INSTANCE = Field(
    default=False,
    description="In a keyed journey: match events of any instance, not only those with "
    "this instance's key",
)


class EventMatch(Strict):
    """An event by name, optionally with a condition over it and the user (and, for a
    segment's entries and exits, which segment)."""

    event: str = Field(min_length=1, max_length=200)
    segment: str | None = Field(default=None, pattern=IDENTIFIER)
    where: Condition | None = None
    any_instance: bool = ANY_INSTANCE

    @model_validator(mode="after")
    def _segment(self) -> EventMatch:
        return _segment_event(self)


def _event_match(value: Any) -> Any:
    return {"event": value} if isinstance(value, str) else value


ExitOn = Annotated[
    EventMatch, BeforeValidator(_event_match, json_schema_input_type=str | EventMatch)
]


class Goal(EventMatch):
    """The conversion this journey works towards, counted within a window from entry."""

    within: Duration = timedelta(days=7)
    exit: bool = True


# ---- steps -----------------------------------------------------------------


class WaitUntil(Strict):
    until: TimeOfDay = Field(description="Local time of day, HH:MM")
    timezone: str = Field(
        default="user",
        description="'user' (the profile's timezone, else the workspace default) or an IANA name",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return value if value == "user" else _check_zone(value)


def _check_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r}") from None
    return value


def _wait_form(value: Any) -> str:
    return "<until>" if isinstance(value, dict | WaitUntil) else "<duration>"


WaitSpec = Annotated[
    Annotated[Duration, Tag("<duration>")] | Annotated[WaitUntil, Tag("<until>")],
    Discriminator(_wait_form),
]


class WaitStep(Strict):
    """Pause for a duration, or until the next local time of day."""

    wait: WaitSpec
    next: StepId


def _since(value: Any) -> Any:
    if value == "entry" or isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except DurationError:
        raise ValueError(f"{value!r}: write `entry` or a duration like 2h") from None


Since = Annotated[
    Literal["entry"] | timedelta,
    BeforeValidator(_since),
    PlainSerializer(lambda v: v if v == "entry" else format_duration(v)),
    WithJsonSchema({"anyOf": [{"const": "entry"}, DURATION_SCHEMA]}),
]


class WaitFor(Strict):
    """Which event, how long, and where to go. The wait sees every matching event the
    journey heard since the user's previous wait ended (or since entry, if there was
    none), so an event that arrived while a send was running still counts; `since:
    entry` or `since: <duration>` looks further back (never before entry; the trigger
    itself does not count). An event already heard satisfies the wait at once."""

    event: str = Field(min_length=1, max_length=200)
    segment: str | None = Field(default=None, pattern=IDENTIFIER)
    where: Condition | None = None
    timeout: Duration
    on_event: StepId
    on_timeout: StepId
    any_instance: bool = ANY_INSTANCE
    since: Since | None = Field(
        default=None,
        description="How far back an event counts: default, since the previous wait ended; "
        "`entry`; or a duration before the wait began",
    )

    @model_validator(mode="after")
    def _segment(self) -> WaitFor:
        return _segment_event(self)


class WaitForStep(Strict):
    """Wait for an event (optionally matching `where`) up to a timeout, then go one of two ways."""

    wait_for: WaitFor


class BranchArm(Strict):
    when: Condition | None = None
    next: StepId


class BranchStep(Strict):
    """The first arm whose `when` holds; the last arm has no `when` and is the default."""

    branch: list[BranchArm] = Field(min_length=1)

    @field_validator("branch")
    @classmethod
    def _default_last(cls, arms: list[BranchArm]) -> list[BranchArm]:
        if arms[-1].when is not None:
            raise ValueError("the last arm of a branch is the default: give it no `when`")
        for arm in arms[:-1]:
            if arm.when is None:
                raise ValueError("only the last arm of a branch may have no `when`")
        return arms


class Variant(Strict):
    name: str = Field(pattern=IDENTIFIER)
    weight: int = Field(default=1, gt=0, le=10_000, description="Share in a fixed split")
    next: StepId


class Experiment(Strict):
    key: str = Field(pattern=IDENTIFIER)
    variants: list[Variant] = Field(min_length=2)
    mode: Literal["fixed", "bandit"] = Field(
        default="fixed",
        description="fixed: weighted split, sticky per user by consistent hashing; "
        "bandit: Thompson sampling on observed conversions, sticky once assigned",
    )
    reward: Literal["goal", "click"] = Field(
        default="goal",
        description="bandit: a conversion is the journey's goal, or a click on a message",
    )
    min_share: float = Field(
        default=0.1, ge=0, le=0.5, description="bandit: the least share of users each variant gets"
    )

    @model_validator(mode="after")
    def _floor_fits(self) -> Experiment:
        if self.min_share * len(self.variants) > 1:
            raise ValueError("min_share x the number of variants is more than everyone")
        return self

    @field_validator("variants")
    @classmethod
    def _unique(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return variants


class ExperimentStep(Strict):
    """Split users between variants by weight; a user always gets the same variant."""

    experiment: Experiment


class ContentVariants(Strict):
    """Alternatives to a send's template; a bandit picks one per user by its clicks."""

    key: str = Field(pattern=IDENTIFIER, description="Names the test; users keep their pick")
    templates: list[str] = Field(min_length=1, description="Alternatives to `template`")
    reward: Literal["click", "goal"] = Field(
        default="click", description="click: a click on this message; goal: the journey goal"
    )
    min_share: float = Field(default=0.1, ge=0, le=0.5)


class Content(Strict):
    recommendations: Recommendations | None = None


class Send(Strict):
    channel: ChannelName | None = None
    channels: list[ChannelName] | None = Field(
        default=None, min_length=1, description="Ordered fallback"
    )
    template: str = Field(min_length=1)
    variants: ContentVariants | None = None
    content: Content | None = None
    tags: list[str] = Field(default_factory=list)
    value: float | None = Field(default=None, ge=0, description="Expected value, for arbitration")

    @model_validator(mode="after")
    def _one_channel_form(self) -> Send:
        if (self.channel is None) == (self.channels is None):
            raise ValueError("give either `channel` or `channels` (an ordered fallback list)")
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError("`channels` lists a channel twice")
        return self

    @model_validator(mode="after")
    def _variants_differ(self) -> Send:
        if self.variants is not None:
            names = self.templates
            if len(set(names)) != len(names):
                raise ValueError("`variants.templates` repeats a template")
            if self.variants.min_share * len(names) > 1:
                raise ValueError("min_share x the number of templates is more than everyone")
        return self

    @property
    def templates(self) -> list[str]:
        """Every template this send may use: the first, then its alternatives."""
        return [self.template, *(self.variants.templates if self.variants else [])]

    @property
    def channel_order(self) -> list[ChannelName]:
        return [self.channel] if self.channel is not None else list(self.channels or [])


class SendStep(Strict):
    """Send a message rendered from a template on a channel (or the first allowed of several)."""

    send: Send
    next: StepId


class UpdateProfile(Strict):
    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> UpdateProfile:
        if not self.set and not self.unset:
            raise ValueError("update_profile needs `set` or `unset`")
        return self


class UpdateProfileStep(Strict):
    """Set or remove profile traits; string values are rendered as templates."""

    update_profile: UpdateProfile
    next: StepId


class Webhook(Strict):
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)


class WebhookStep(Strict):
    """Call an external system with a signed JSON request; string values are templates."""

    webhook: Webhook
    next: StepId


class ExitStep(Strict):
    """End the journey here."""

    exit: dict[str, Any] | None = None

    @field_validator("exit")
    @classmethod
    def _empty(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("exit takes no options: write `exit: {}`")
        return value


STEP_KINDS = (
    "wait",
    "wait_for",
    "branch",
    "experiment",
    "send",
    "update_profile",
    "webhook",
    "exit",
)


def step_kind(value: Any) -> str | None:
    """The kind of a raw or parsed step: its single kind key, or None."""
    if isinstance(value, BaseModel):
        value = value.__class__.model_fields
    if not isinstance(value, dict):
        return None
    kinds = [k for k in STEP_KINDS if k in value]
    return kinds[0] if len(kinds) == 1 else None


def _step_tag(value: Any) -> str | None:
    # Union tags appear in error locations; "<...>" marks them so they can be dropped.
    kind = step_kind(value)
    return f"<{kind}>" if kind else None


Step = Annotated[
    Annotated[WaitStep, Tag("<wait>")]
    | Annotated[WaitForStep, Tag("<wait_for>")]
    | Annotated[BranchStep, Tag("<branch>")]
    | Annotated[ExperimentStep, Tag("<experiment>")]
    | Annotated[SendStep, Tag("<send>")]
    | Annotated[UpdateProfileStep, Tag("<update_profile>")]
    | Annotated[WebhookStep, Tag("<webhook>")]
    | Annotated[ExitStep, Tag("<exit>")],
    Discriminator(
        _step_tag,
        custom_error_type="step_kind",
        custom_error_message="a step needs exactly one of: " + ", ".join(STEP_KINDS),
    ),
]


def successors(step: Step) -> list[str]:
    """The step ids a step can go to next, in order."""
    match step:
        case WaitForStep(wait_for=w):
            return [w.on_event, w.on_timeout]
        case BranchStep(branch=arms):
            return [arm.next for arm in arms]
        case ExperimentStep(experiment=e):
            return [v.next for v in e.variants]
        case ExitStep():
            return []
        case _:
            return [step.next]


def is_wait(step: Step) -> bool:
    """Whether reaching this step makes the user wait (so a cycle through it is allowed)."""
    return isinstance(step, WaitStep | WaitForStep)


EXIT = "exit"  # a migration's target that ends the journey


class Migrate(Strict):
    """Move the users inside earlier versions onto this one, each at a safe point: step
    by step as `steps` says (`exit` ends their journey); a step not listed goes to the
    step of the same id. A wait moved to a wait of the same kind keeps how long it has
    waited."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True
    )

    from_: list[Annotated[int, Field(ge=1)]] = Field(
        alias="from", min_length=1, description="The versions whose users move"
    )
    steps: dict[Annotated[str, Field(pattern=IDENTIFIER)], str] = Field(
        default_factory=dict, description="old step -> new step, or `exit`"
    )

    def target(self, old_step: str, new_steps: Collection[str]) -> str | None:
        """Where a user at `old_step` goes (a step or EXIT); None if nowhere."""
        if old_step in self.steps:
            return self.steps[old_step]
        return old_step if old_step in new_steps else None


class Journey(Strict):
    """One journey file."""

    journey: str = Field(pattern=IDENTIFIER, description="Stable key; never rename")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    priority: int = Field(default=50, ge=0, le=100)
    category: Category = Category.promotional
    trigger: Trigger
    audience: Condition | None = None
    instance: Condition | None = Field(
        default=None,
        description="One instance per user and value of this expression (a cart id, say); "
        "waits, exits and goals hear only events with the same value",
        examples=["event.properties.cart_id"],
    )
    re_entry: ReEntry = "never"
    holdout: float = Field(default=0, ge=0, lt=100, description="Percent kept out as control")
    exit_on: list[ExitOn] = Field(default_factory=list)
    goal: Goal | None = None
    start: StepId
    steps: dict[Annotated[str, Field(pattern=IDENTIFIER)], Step] = Field(min_length=1)
    migrate: Migrate | None = None

    @model_validator(mode="after")
    def _instance_from_an_event(self) -> Journey:
        if self.instance is not None and self.trigger.audience is not None:
            raise ValueError("`instance` takes its key from the trigger event: an audience "
                             "journey has none")  # fmt: skip
        return self

    def instance_of(self, context: Mapping[str, Any]) -> str | None:
        """The instance key an event carries (None: the journey is not keyed, or the
        event has no key; a key longer than MAX_INSTANCE counts as none)."""
        if self.instance is None:
            return None
        try:
            value = evaluate(self.instance, context)
        except Exception:  # like a condition that errors: no key, never a crash
            return None
        if value is None or isinstance(value, Missing) or value == "":
            return None
        key = str(value)
        return key if len(key) <= MAX_INSTANCE else None

    def step_order(self) -> list[str]:
        """The steps as a reader follows them: from `start`, breadth first, each step's
        successors in order (stored versions lose the file's order: JSONB sorts keys)."""
        order, queue = [], [self.start]
        while queue:
            step = queue.pop(0)
            if step in order or step not in self.steps:
                continue
            order.append(step)
            queue.extend(successors(self.steps[step]))
        return order + [s for s in self.steps if s not in order]

    def interesting_events(self) -> set[str]:
        """Events a running user of this journey must hear about (not the trigger)."""
        names = {m.event for m in self.exit_on}
        if self.goal is not None:
            names.add(self.goal.event)
        for step in self.steps.values():
            if isinstance(step, WaitForStep):
                names.add(step.wait_for.event)
        return names
