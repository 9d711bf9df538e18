"""Journey test files (`tests/*.yaml` in a workspace): what a marketer writes.

    journey: cart_abandonment
    tests:
      - name: a shopper who leaves a full cart is reminded after an hour
        user: {id: ada, traits: {email: ada@example.com, first_name: Ada}}
        events:
          - {at: 0s, event: Cart Abandoned, properties: {cart_value: 80}}
        expect:
          messages:
            - {channel: email, template: cart_reminder, at: 1h, contains: [Ada]}
          status: completed

Times are relative to the test's start (`start`, by default the next 10:00 UTC, so
that quiet hours and local times come out the same on every run). Every expectation
is optional; a list given is compared whole (`suppressed: []` says "nothing was").
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from orchestrator.sources import InvalidSource, Problem, Source, load
from rules.durations import Duration
from rules.local_time import TimeOfDay
from rules.policy import SuppressionReason
from workflows.spec import IDENTIFIER, ChannelName


def _offset(value: Any) -> Any:
    """A time after the start: a duration, or zero written `0` or `0s`."""
    if value == 0 or (isinstance(value, str) and re.fullmatch(r"\s*0+\s*[wdhms]?\s*", value)):
        return timedelta(0)
    return value


Offset = Annotated[Duration, BeforeValidator(_offset)]
"""A time after the test's start, like `0s`, `30m` or `1d2h`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TestUser(_Strict):
    id: str = Field(default="test-user", min_length=1, max_length=200)
    traits: dict[str, Any] = Field(default_factory=dict)


class TimelineItem(_Strict):
    """At a time after the start: an event the user does, or traits that change."""

    at: Offset = timedelta(0)
    event: str | None = Field(default=None, min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TimelineItem:
        if (self.event is None) == (self.traits is None):
            raise ValueError("give `event` (the user does something) or `traits` (they change)")
        if self.traits is not None and self.properties:
            raise ValueError("`properties` go with an `event`")
        return self


class PastContact(_Strict):
    """A message the user got before the test starts (counts towards caps)."""

    channel: ChannelName
    ago: Duration
    category: Literal["promotional", "transactional", "service"] = "promotional"
    journey: str | None = None
    tags: list[str] = Field(default_factory=list)


class StandingSuppression(_Strict):
    reason: SuppressionReason
    channel: str = "*"
    category: str = "*"


class ExpectedMessage(_Strict):
    channel: ChannelName | None = None
    template: str | None = None
    at: Offset | None = Field(default=None, description="After the start")
    within: Duration = Field(default=timedelta(minutes=1), description="Tolerance on `at`")
    contains: list[str] | str = Field(default_factory=list, description="Rendered text fragments")

    @property
    def fragments(self) -> list[str]:
        return [self.contains] if isinstance(self.contains, str) else list(self.contains)


class ExpectedDecision(_Strict):
    """A suppression or deferral: at which step, and words of its reason."""

    step: str | None = None
    reason: str | None = None


Status = Literal["running", "waiting", "completed", "exited", "converted"]


class Expectations(_Strict):
    entered: bool | None = None
    held_out: bool | None = None
    messages: list[ExpectedMessage] | None = None
    suppressed: list[ExpectedDecision] | None = None
    deferred: list[ExpectedDecision] | None = None
    failed: list[ExpectedDecision] | None = Field(
        default=None, description="Sends or webhooks that failed; unless given, any is a failure"
    )
    steps: list[str] | None = Field(default=None, description="Every step visited, in order")
    status: Status | None = Field(default=None, description="A keyed journey: the last instance's")
    end_reason: str | None = Field(default=None, description="Words of the reason it ended")
    converted: bool | None = None
    variants: dict[str, str] | None = None
    instances: dict[str, Status] | None = Field(
        default=None, description="A keyed journey: each instance's status, by key"
    )


class JourneyTest(_Strict):
    name: str = Field(min_length=1, max_length=200)
    user: TestUser = Field(default_factory=TestUser)
    start: TimeOfDay | datetime = Field(
        default="10:00", description="HH:MM (the next such time, UTC) or a future date-time"
    )
    contacts: list[PastContact] = Field(default_factory=list)
    suppressions: list[StandingSuppression] = Field(default_factory=list)
    policy: dict[str, Any] | None = Field(
        default=None, description="Replaces the workspace's policy.yaml for this test"
    )
    variants: dict[str, str] = Field(
        default_factory=dict, description="Force an experiment's (or a send's) variant"
    )
    events: list[TimelineItem] = Field(min_length=1)
    run_for: Duration = Field(
        default=timedelta(days=90), description="How long after the last event to let it run"
    )
    expect: Expectations

    @model_validator(mode="after")
    def _start_ahead(self) -> JourneyTest:
        # The time-skipping server moves forward only, from now.
        if isinstance(self.start, datetime) and self.start_after(datetime.now(UTC)) <= (
            datetime.now(UTC)
        ):
            raise ValueError(f"start {self.start.isoformat()} has passed: give a time of day "
                             "(HH:MM, the next one) or a date-time to come")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _variant_keys(self) -> JourneyTest:
        for key in self.variants:
            if not isinstance(key, str) or not _is_identifier(key):
                raise ValueError(f"variants: {key!r} is not an experiment key")
        return self

    def start_after(self, now: datetime) -> datetime:
        """When the test's time 0 is, given the server's current time."""
        if isinstance(self.start, datetime):
            start = self.start if self.start.tzinfo else self.start.replace(tzinfo=UTC)
            return start.astimezone(UTC)
        hour, minute = (int(part) for part in self.start.split(":"))
        start = now.astimezone(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
        return start if start > now else start + timedelta(days=1)


class TestFile(_Strict):
    journey: str = Field(pattern=IDENTIFIER)
    tests: list[JourneyTest] = Field(min_length=1)


def _is_identifier(text: str) -> bool:
    return re.fullmatch(IDENTIFIER, text) is not None


class LoadedFile:
    """A valid test file and where each of its parts is, for failures to point at."""

    def __init__(self, source: Source, tests: TestFile) -> None:
        self.source, self.file = source, tests

    def where(self, *loc: str | int) -> str:
        line, col = self.source.position(list(loc))
        return f"{self.source.file}:{line}:{col}"


def load_test_file(path: Path, display: str) -> LoadedFile:
    """Parse and validate one test file; InvalidSource with every problem's position."""
    source = load(path, display=display)
    if not isinstance(source.data, dict):
        raise InvalidSource([Problem(display, 1, 1, "", "a test file must be a mapping")])
    try:
        tests = TestFile.model_validate(source.data)
    except ValidationError as exc:
        raise InvalidSource(source.problems_from(exc)) from None
    return LoadedFile(source, tests)
