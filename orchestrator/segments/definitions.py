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
import re
from dataclasses import dataclass, field
from functools import cached_property
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Annotated, Any

from jinja2 import nodes
from jinja2.parser import Parser
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.sources import InvalidSource, Problem, Source, load
from orchestrator.tables import segment_definitions
from rules.durations import Duration
from rules.expressions import ENVIRONMENT, condition_over
from workflows.spec import IDENTIFIER, SEGMENT_EVENTS

TRAITS_FILE = "traits.yaml"
SEGMENTS_FILE = "segments.yaml"
SEGMENT_ENTERED, SEGMENT_EXITED = SEGMENT_EVENTS
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
            if not given and set(data) - set(cls.model_fields):
                return data  # a misspelt kind: "unknown key" says more
            if len(given) != 1:
                raise ValueError("a trait needs exactly one of: " + ", ".join(KINDS))
        return data

    # Read for every event of every user: computed once per (immutable) trait.

    @cached_property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @cached_property
    def over(self) -> Over | None:
        value = getattr(self, self.kind)
        return value if isinstance(value, Over) else None

    @cached_property
    def events(self) -> frozenset[str]:
        """The event names this trait reads."""
        if self.over is not None:
            return frozenset({self.over.event})
        if self.sequence is not None:
            follower = self.sequence.then or self.sequence.then_not or ""
            return frozenset({self.sequence.first, follower})
        return frozenset()

    @cached_property
    def digest(self) -> str:
        """Changes when what the trait computes changes (the description does not count)."""
        data = self.model_dump(mode="json", exclude={"description"}, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class Segment(_Strict):
    """Users for whom `when` holds, over their traits (sent and computed)."""

    description: str = ""
    when: UserExpression


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
        return frozenset(name for trait in self.traits.values() for name in trait.events)

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
        # JSONB keeps no key order: put each expression after what it reads again.
        ordered = {name: traits[name] for name in evaluation_order(traits)}
        return cls(ordered, segments, sources or {})


@dataclass(frozen=True)
class Current:
    """The definitions in force and their version (0: none deployed yet)."""

    version: int = 0
    definitions: Definitions = field(default_factory=Definitions)


async def deployed(conn: AsyncConnection, version: int | None = None) -> Current:
    """The traits and segments of a deployed version (default: the newest, in force)."""
    query = select(segment_definitions.c.version, segment_definitions.c.definitions)
    if version is not None:
        query = query.where(segment_definitions.c.version == version)
    found = (
        await conn.execute(query.order_by(segment_definitions.c.version.desc()).limit(1))
    ).one_or_none()
    if found is None:
        return Current()
    return Current(found.version, Definitions.from_json(found.definitions))


def user_names(expression: str) -> set[str]:
    """The `user.<name>` and `user["name"]` attributes an expression reads."""
    node = Parser(ENVIRONMENT, expression, state="variable").parse_expression()
    found = set()
    for n in [node, *node.find_all((nodes.Getattr, nodes.Getitem))]:
        if not isinstance(n, nodes.Getattr | nodes.Getitem):
            continue
        if not isinstance(n.node, nodes.Name) or n.node.name != "user":
            continue
        if isinstance(n, nodes.Getattr):
            found.add(n.attr)
        elif isinstance(n.arg, nodes.Const):
            found.add(str(n.arg.value))
    return found


def load_definitions(root: Path) -> Definitions:
    """The workspace's traits and segments (none when the files are absent); raise
    InvalidSource with every problem at its position."""
    problems: list[Problem] = []
    sources: dict[str, str] = {}
    traits: dict[str, Trait] = {}
    segments: dict[str, Segment] = {}
    if (source := _load(root / TRAITS_FILE, problems)) is not None:
        sources[TRAITS_FILE] = source.text
        found = _entries(source, "traits", Trait, problems)
        traits = _ordered(source, {k: v for k, v in found.items() if isinstance(v, Trait)},
                          problems)  # fmt: skip
    if (source := _load(root / SEGMENTS_FILE, problems)) is not None:
        sources[SEGMENTS_FILE] = source.text
        found = _entries(source, "segments", Segment, problems)
        segments = {k: v for k, v in found.items() if isinstance(v, Segment)}
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


def _entries(
    source: Source, section: str, model: type[BaseModel], problems: list[Problem]
) -> dict[str, BaseModel]:
    """Each entry of the file's one section, validated on its own so that every broken
    entry is reported, not only the first."""
    data = source.data if source.data is not None else {section: {}}
    if not isinstance(data, dict) or set(data) - {section}:
        extra = sorted(set(data) - {section}) if isinstance(data, dict) else []
        loc: list[str | int] = [extra[0]] if extra else []
        problems.append(source.problem(loc, f"the file holds one mapping, `{section}:`",
                                       key=bool(extra)))  # fmt: skip
        return {}
    entries = data.get(section) or {}
    if not isinstance(entries, dict):
        problems.append(source.problem([section], "must be a mapping of names"))
        return {}
    valid: dict[str, BaseModel] = {}
    for name, raw in entries.items():
        if not isinstance(name, str) or not re.match(IDENTIFIER, name):
            message = "a name is lowercase letters, digits and _, starting with a letter"
            problems.append(source.problem([section, name], message, key=True))
            continue
        try:
            valid[name] = model.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            problems.extend(source.problems_from(exc, prefix=[section, name]))
            continue
        entry = valid[name]
        wrong = _kind_problems(entry) if isinstance(entry, Trait) else []
        for loc, message in wrong:
            problems.append(source.problem([section, name, *loc], message))
        if wrong:
            del valid[name]
    return valid


def _kind_problems(trait: Trait) -> list[tuple[list[str | int], str]]:
    """What an aggregate's kind cannot take, at the key that gives it."""
    kind, over = trait.kind, trait.over
    if trait.events & set(SEGMENT_EVENTS):
        # Segments are made of traits: a trait made of segments would chase itself.
        return [([kind], "traits do not read segment entries and exits")]
    if kind not in AGGREGATES or over is None:
        return []
    needs_property, window, half_life = AGGREGATES[kind]
    found: list[tuple[list[str | int], str]] = []
    if needs_property and over.property is None:
        found.append(([kind], f"`{kind}` needs the `property` it aggregates"))
    if not needs_property and over.property is not None:
        found.append(([kind, "property"], f"`{kind}` takes no `property`"))
    if over.window is not None and not window:
        found.append(([kind, "window"], f"`{kind}` takes no `window`: it reads every event"))
    if over.half_life is not None and not half_life:
        found.append(([kind, "half_life"], f"`{kind}` takes no `half_life`"))
    return found


def evaluation_order(traits: dict[str, Trait]) -> list[str]:
    """Trait names with each expression after the computed traits it reads (CycleError
    when expressions read each other in a loop)."""
    graph = {
        name: {used for used in user_names(t.expression) if used in traits and used != name}
        if t.expression is not None
        else set()
        for name, t in traits.items()
    }
    return list(TopologicalSorter(graph).static_order())


def _ordered(source: Source, traits: dict[str, Trait], problems: list[Problem]) -> dict[str, Trait]:
    """Traits with each expression after the computed traits it reads; loops are problems."""
    for name in sorted(RESERVED & traits.keys()):
        problems.append(source.problem(["traits", name], f"'{name}' is the profile's own name",
                                       key=True))  # fmt: skip
    for name, trait in traits.items():
        if trait.expression is not None and name in user_names(trait.expression):
            problems.append(source.problem(["traits", name, "expression"], "reads itself"))
    try:
        order = evaluation_order(traits)
    except CycleError as exc:
        cycle = exc.args[1]
        path = " -> ".join(cycle)
        problems.append(
            source.problem(["traits", cycle[0], "expression"], f"expressions loop: {path}")
        )
        return traits
    return {name: traits[name] for name in order}
