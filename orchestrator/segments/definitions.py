"""`traits.yaml` and `segments.yaml`: what a workspace computes about its users.

    traits:
      orders_count:
        count: Order Completed
      revenue_90d:
        sum: {event: Order Completed, property: revenue, window: 90d}
      engagement:
        count: {event: Email Opened, half_life: 14d}
      abandoned_browse:
        sequence: {first: Product Viewed, then_not: Order Completed, within: 1d}
      value_per_order:
        expression: "user.revenue_90d / user.orders_90d if user.orders_90d else 0"

    segments:
      lapsed:
        when: user.days_since_last_order >= 90 and user.orders_count > 0

Each trait has exactly one kind key; unknown keys, windows a kind cannot take and
expressions that loop are reported at their `file:line:col`, like journeys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Annotated, Any

from jinja2 import nodes
from jinja2.parser import Parser
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from orchestrator.sources import InvalidSource, Problem, Source, load
from rules.durations import Duration
from rules.expressions import ENVIRONMENT, condition_over
from workflows.spec import IDENTIFIER

TRAITS_FILE = "traits.yaml"
SEGMENTS_FILE = "segments.yaml"
SEGMENT_ENTERED = "Segment Entered"
SEGMENT_EXITED = "Segment Exited"
# `user.id` and `user.traits` are the profile's own; a trait cannot take those names.
RESERVED = frozenset({"id", "traits"})

EventCondition = Annotated[str, condition_over(("event",))]
UserExpression = Annotated[str, condition_over(("user",))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _event_name(value: Any) -> Any:
    return {"event": value} if isinstance(value, str) else value


class Over(_Strict):
    """The events an aggregate reads: by name, optionally filtered, over a window or
    weighted by age (a half-life), never both."""

    event: str = Field(min_length=1, max_length=200)
    where: EventCondition | None = Field(
        default=None, description="A condition over `event` (its properties) to count it"
    )
    property: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="The event property aggregated (a dotted path into properties)",
    )  # fmt: skip
    window: Duration | None = Field(default=None, description="Only events this recent count")
    half_life: Duration | None = Field(
        default=None, description="Older events weigh less: half as much per half-life"
    )

    @model_validator(mode="after")
    def _one_horizon(self) -> Over:
        if self.window is not None and self.half_life is not None:
            raise ValueError("give `window` or `half_life`, not both")
        return self


EventsRead = Annotated[Over, BeforeValidator(_event_name, json_schema_input_type=str | Over)]


class Sequence(_Strict):
    """Whether `then` followed (or `then_not` did not follow) the latest `first` within
    `within`: viewed and did not buy within a day is abandonment."""

    first: str = Field(min_length=1, max_length=200)
    then: str | None = Field(default=None, min_length=1, max_length=200)
    then_not: str | None = Field(default=None, min_length=1, max_length=200)
    within: Duration

    @model_validator(mode="after")
    def _one_follower(self) -> Sequence:
        if (self.then is None) == (self.then_not is None):
            raise ValueError("give either `then` or `then_not`")
        return self


# What each aggregate may take: (needs a property, window allowed, half-life allowed).
AGGREGATES: dict[str, tuple[bool, bool, bool]] = {
    "count": (False, True, True),
    "sum": (True, True, True),
    "average": (True, True, True),
    "min": (True, True, False),
    "max": (True, True, False),
    "first_time": (False, False, False),
    "last_time": (False, False, False),
    "days_since": (False, False, False),
    "distinct_count": (True, True, False),
    "most_frequent": (True, True, True),
}
KINDS = (*AGGREGATES, "sequence", "expression")


class Trait(_Strict):
    """One computed trait: exactly one kind key."""

    description: str = ""
    count: EventsRead | None = None
    sum: EventsRead | None = None
    average: EventsRead | None = None
    min: EventsRead | None = None
    max: EventsRead | None = None
    first_time: EventsRead | None = None
    last_time: EventsRead | None = None
    days_since: EventsRead | None = None
    distinct_count: EventsRead | None = None
    most_frequent: EventsRead | None = None
    sequence: Sequence | None = None
    expression: UserExpression | None = Field(
        default=None, description="A value over `user` and the traits computed before it"
    )

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in KINDS if data.get(k) is not None]
            if len(given) != 1:
                raise ValueError("a trait needs exactly one of: " + ", ".join(KINDS))
        return data

    @model_validator(mode="after")
    def _fits_kind(self) -> Trait:
        kind = self.kind
        if kind not in AGGREGATES:
            return self
        needs_property, window, half_life = AGGREGATES[kind]
        over = self.over
        assert over is not None
        if needs_property and over.property is None:
            raise ValueError(f"`{kind}` needs the `property` it aggregates")
        if not needs_property and over.property is not None:
            raise ValueError(f"`{kind}` takes no `property`")
        if over.window is not None and not window:
            raise ValueError(f"`{kind}` takes no `window`: it reads every event")
        if over.half_life is not None and not half_life:
            raise ValueError(f"`{kind}` takes no `half_life`")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def over(self) -> Over | None:
        value = getattr(self, self.kind)
        return value if isinstance(value, Over) else None

    def events(self) -> set[str]:
        """The event names this trait reads."""
        if self.over is not None:
            return {self.over.event}
        if self.sequence is not None:
            return {self.sequence.first, self.sequence.then or self.sequence.then_not or ""}
        return set()

    def digest(self) -> str:
        """Changes when what the trait computes changes (the description does not count)."""
        data = self.model_dump(mode="json", exclude={"description"}, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class TraitsFile(_Strict):
    traits: dict[Annotated[str, Field(pattern=IDENTIFIER)], Trait] = Field(default_factory=dict)


class Segment(_Strict):
    """Users for whom `when` holds, over their traits (sent and computed)."""

    description: str = ""
    when: UserExpression


class SegmentsFile(_Strict):
    segments: dict[Annotated[str, Field(pattern=IDENTIFIER)], Segment] = Field(default_factory=dict)


@dataclass(frozen=True)
class Definitions:
    """A workspace's computed traits, in evaluation order (an expression after the traits
    it reads), and its segments."""

    traits: dict[str, Trait] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file -> text, as deployed

    def __bool__(self) -> bool:
        return bool(self.traits or self.segments)

    def events(self) -> frozenset[str]:
        """Every event name some trait reads."""
        return frozenset(name for trait in self.traits.values() for name in trait.events())

    def as_json(self) -> dict[str, Any]:
        return {
            "traits": {k: t.model_dump(mode="json", exclude_none=True)
                       for k, t in self.traits.items()},
            "segments": {k: s.model_dump(mode="json") for k, s in self.segments.items()},
        }  # fmt: skip

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any], sources: dict[str, str] | None = None) -> Definitions:
        traits = {k: Trait.model_validate(v) for k, v in data.get("traits", {}).items()}
        segments = {k: Segment.model_validate(v) for k, v in data.get("segments", {}).items()}
        return cls(traits, segments, sources or {})


@dataclass(frozen=True)
class Current:
    """The definitions in force and their version (0: none deployed yet)."""

    version: int = 0
    definitions: Definitions = field(default_factory=Definitions)


def user_names(expression: str) -> set[str]:
    """The `user.<name>` attributes an expression reads."""
    node = Parser(ENVIRONMENT, expression, state="variable").parse_expression()
    return {
        n.attr
        for n in [node, *node.find_all(nodes.Getattr)]
        if isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) and n.node.name == "user"
    }


def load_definitions(root: Path) -> Definitions:
    """The workspace's traits and segments (none when the files are absent); raise
    InvalidSource with every problem at its position."""
    problems: list[Problem] = []
    traits: dict[str, Trait] = {}
    segments: dict[str, Segment] = {}
    sources: dict[str, str] = {}
    traits_source = _load(root / TRAITS_FILE, problems)
    if traits_source is not None:
        sources[TRAITS_FILE] = traits_source.text
        parsed = _validate(traits_source, TraitsFile, problems)
        if isinstance(parsed, TraitsFile):
            traits = _ordered(traits_source, parsed.traits, problems)
    segments_source = _load(root / SEGMENTS_FILE, problems)
    if segments_source is not None:
        sources[SEGMENTS_FILE] = segments_source.text
        parsed_segments = _validate(segments_source, SegmentsFile, problems)
        if isinstance(parsed_segments, SegmentsFile):
            segments = dict(parsed_segments.segments)
    if problems:
        raise InvalidSource(problems)
    return Definitions(traits, segments, sources)


def _load(path: Path, problems: list[Problem]) -> Source | None:
    if not path.exists():
        return None
    try:
        return load(path, display=path.name)
    except InvalidSource as exc:
        problems.extend(exc.problems)
        return None


def _validate(source: Source, model: type[BaseModel], problems: list[Problem]) -> BaseModel | None:
    if source.data is None:
        return model()
    if not isinstance(source.data, dict):
        problems.append(source.problem([], "must be a mapping"))
        return None
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        problems.extend(source.problems_from(exc))
        return None


def _ordered(source: Source, traits: dict[str, Trait], problems: list[Problem]) -> dict[str, Trait]:
    """Traits with each expression after the computed traits it reads; loops are problems."""
    for name in sorted(RESERVED & traits.keys()):
        problems.append(source.problem(["traits", name], f"'{name}' is the profile's own name",
                                       key=True))  # fmt: skip
    graph = {
        name: {used for used in user_names(t.expression) if used in traits and used != name}
        if t.expression is not None
        else set()
        for name, t in traits.items()
    }
    for name, trait in traits.items():
        if trait.expression is not None and name in user_names(trait.expression):
            problems.append(source.problem(["traits", name, "expression"], "reads itself"))
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = exc.args[1]
        path = " -> ".join(cycle)
        problems.append(
            source.problem(["traits", cycle[0], "expression"], f"expressions loop: {path}")
        )
        return traits
    return {name: traits[name] for name in order}


def horizon(trait: Trait) -> timedelta | None:
    """How far back a trait reads (None: every event)."""
    return trait.over.window if trait.over is not None else None
