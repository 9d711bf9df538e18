"""The contact policy (`policy.yaml` in a workspace), as pydantic models.

    caps:          at most N messages per rolling window, filtered by channel, category,
                   journey or tag ("5 promotional in 7d", "1 push in 24h")
    quiet_hours:   local times per channel when nothing but transactional goes out
    consent:       opt-in or opt-out per channel; unsubscribes per channel and category
    suppression:   hard stops (bounce, complaint, CRM do-not-contact)
    reachability:  the profile trait a channel needs (an email address, device tokens)
    conflicts:     requests close together are decided together; the best one wins
    dedupe:        the same content is not sent again on another channel
    rules:         CRM and loyalty conditions with an action

Unknown keys are errors, so a typo is reported at its line.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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

from rules.durations import DURATION_SCHEMA, Duration, format_duration, parse_duration
from rules.expressions import POLICY_NAMES, condition_over
from rules.local_time import TimeOfDay

Channel = Literal["email", "push", "in_app", "web"]
Category = Literal["promotional", "transactional", "service"]
SuppressionReason = Literal["unsubscribe", "bounce", "complaint", "do_not_contact"]
CHANNELS: tuple[Channel, ...] = ("email", "push", "in_app", "web")


def _keyed_by(allowed: tuple[str, ...]) -> Any:
    """A mapping whose keys must be among `allowed` (channels, categories)."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}: use {', '.join(allowed)}")
        return value

    return AfterValidator(check)


CATEGORIES: tuple[Category, ...] = ("promotional", "transactional", "service")
ByChannel = _keyed_by(CHANNELS)
ByCategory = _keyed_by(CATEGORIES)


def _all_channels() -> list[Channel]:
    return list(CHANNELS)


def _opt_out_everywhere() -> dict[str, Literal["opt_in", "opt_out"]]:
    return dict.fromkeys(CHANNELS, "opt_out")


def _hard_reasons() -> list[SuppressionReason]:
    return ["bounce", "complaint", "do_not_contact"]


def _default_windows() -> dict[str, timedelta]:
    # No policy, no holding: a workspace opts in to conflict windows.
    return dict.fromkeys(CATEGORIES, timedelta(0))


def _default_reachability() -> dict[str, str | None]:
    return {"email": "email", "push": "device_tokens", "in_app": None, "web": None}


def _zero_or_duration(value: Any) -> timedelta:
    if value in (0, "0", "0s"):
        return timedelta(0)
    return value if isinstance(value, timedelta) else parse_duration(value)


Window = Annotated[
    timedelta,
    BeforeValidator(_zero_or_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"anyOf": [DURATION_SCHEMA, {"enum": [0, "0", "0s"]}]}),
]
"""A duration, or 0 for "off"."""

Condition = Annotated[
    str,
    condition_over(POLICY_NAMES),
    WithJsonSchema({"type": "string", "description": "A Jinja2 expression over user, message"}),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cap(Strict):
    """At most `max` messages matching the filters in any rolling `window`."""

    name: str = Field(min_length=1, max_length=100)
    max: int = Field(ge=0)
    window: Duration
    channel: Channel | None = None
    category: Category | None = None
    journey: str | None = None
    tag: str | None = None
    counts_transactional: bool = Field(
        default=False,
        description="Transactional messages are never blocked by caps; count them here anyway",
    )


class QuietHours(Strict):
    """Local times (in the user's timezone) when only transactional messages go out."""

    channels: list[Channel] = Field(default_factory=_all_channels, min_length=1)
    start: TimeOfDay = Field(description="HH:MM, e.g. 21:00")
    end: TimeOfDay = Field(description="HH:MM, e.g. 08:00; may be on the next day")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need different start and end times")
        return self


class Consent(Strict):
    """Whether a channel needs an explicit yes (opt_in) or only the absence of a no."""

    channels: Annotated[dict[str, Literal["opt_in", "opt_out"]], ByChannel] = Field(
        default_factory=_opt_out_everywhere
    )
    trait: str = Field(
        default="consent",
        description="Profile trait: {channel: true|false} or {channel: {category: true|false}}",
    )
    unsubscribe_events: list[str] = Field(
        default_factory=lambda: ["Unsubscribed", "unsubscribed"],
        description="Events whose properties.channel / properties.category record an unsubscribe",
    )


class Suppression(Strict):
    """Hard stops. Transactional messages obey the reasons listed in `transactional_obeys`."""

    do_not_contact_trait: str = "do_not_contact"
    bounce_events: list[str] = Field(default_factory=lambda: ["message_bounced"])
    complaint_events: list[str] = Field(default_factory=lambda: ["message_complained"])
    transactional_obeys: list[SuppressionReason] = Field(default_factory=_hard_reasons)


class Conflicts(Strict):
    """Requests for one user inside a window are decided together: the best score wins."""

    windows: Annotated[dict[str, Window], ByCategory] = Field(default_factory=_default_windows)
    losers: Literal["defer", "suppress"] = "suppress"
    defer_losers_by: Duration = timedelta(hours=4)

    @field_validator("windows")
    @classmethod
    def _transactional_immediate(cls, windows: dict[str, timedelta]) -> dict[str, timedelta]:
        if windows.get("transactional", timedelta(0)) != timedelta(0):
            raise ValueError("transactional messages are never held: its window must be 0")
        return windows


class Dedupe(Strict):
    """The same content key (the template, unless the send names one) is not sent again on
    another channel within `window`; 0 (the default) turns this off."""

    window: Window = timedelta(0)


class Reroute(Strict):
    reroute: Channel


class RequireChannel(Strict):
    require_channel: Channel


class SetPriority(Strict):
    priority: int = Field(ge=0, le=100)


def _action_form(value: Any) -> str | None:
    # Tags appear in error locations; "<...>" marks them so they can be dropped there.
    if isinstance(value, str):
        return "<named>"
    if isinstance(value, Reroute | RequireChannel | SetPriority):
        value = type(value).model_fields
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return {"reroute": "<reroute>", "require_channel": "<require>",
                "priority": "<priority>"}.get(key)  # fmt: skip
    return None


Action = Annotated[
    Annotated[Literal["suppress", "exempt_from_caps"], Tag("<named>")]
    | Annotated[Reroute, Tag("<reroute>")]
    | Annotated[RequireChannel, Tag("<require>")]
    | Annotated[SetPriority, Tag("<priority>")],
    Discriminator(
        _action_form,
        custom_error_type="rule_action",
        custom_error_message="then: suppress, exempt_from_caps, {reroute: <channel>}, "
        "{require_channel: <channel>} or {priority: <0-100>}",
    ),
]


class Rule(Strict):
    """A CRM or loyalty rule: when the condition holds, the action applies."""

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    when: Condition
    then: Action


class Policy(Strict):
    """`policy.yaml`."""

    caps: list[Cap] = Field(default_factory=list)
    on_cap: Literal["suppress", "defer"] = Field(
        default="suppress", description="What a capped message does: dropped, or sent later"
    )
    max_defer: Duration = Field(
        default=timedelta(days=3), description="A message deferred longer is suppressed instead"
    )
    quiet_hours: list[QuietHours] = Field(default_factory=list)
    timezone_trait: str = "timezone"
    consent: Consent = Field(default_factory=Consent)
    suppression: Suppression = Field(default_factory=Suppression)
    reachability: Annotated[dict[str, str | None], ByChannel] = Field(
        default_factory=_default_reachability,
        description="The profile trait a channel needs; none means always reachable",
    )
    conflicts: Conflicts = Field(default_factory=Conflicts)
    dedupe: Dedupe = Field(default_factory=Dedupe)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("caps", "rules")
    @classmethod
    def _unique_names(cls, items: list[Cap] | list[Rule]) -> list[Cap] | list[Rule]:
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names must be unique: {', '.join(duplicates)}")
        return items

    @property
    def longest_window(self) -> timedelta:
        """How far back contact history matters."""
        windows = [cap.window for cap in self.caps] + [self.dedupe.window]
        return max(windows, default=timedelta(0))

    def window_for(self, category: str) -> timedelta:
        return self.conflicts.windows.get(category, timedelta(0))
