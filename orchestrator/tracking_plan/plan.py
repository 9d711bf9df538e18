"""`tracking_plan.yaml`: what each event's properties and the identify traits must be.

    mode: enforce               # or report (the default)
    unplanned_events: allow     # allow | report | refuse
    events:
      Order Completed:          # a JSON Schema for the event's properties
        type: object
        properties:
          order_id: {type: string}
          revenue: {type: number, minimum: 0}
        required: [order_id, revenue]
    identify:                   # a JSON Schema for identify calls' traits
      type: object
      properties:
        email: {type: string, format: email}

Every schema is checked against its JSON Schema metaschema (2020-12 unless it names
another draft in `$schema`) and compiled once; problems are reported at `file:line:col`
like journeys'. References stay inside the schema (`#/$defs/...`): nothing is fetched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.sources import InvalidSource, Loc, Problem, Source, load

PLAN_FILE = "tracking_plan.yaml"
Mode = Literal["enforce", "report"]
Unplanned = Literal["allow", "report", "refuse"]

# The drafts a schema may name in `$schema`; without one, 2020-12.
DRAFTS = {
    "https://json-schema.org/draft/2020-12/schema": jsonschema_rs.Draft202012,
    "https://json-schema.org/draft/2019-09/schema": jsonschema_rs.Draft201909,
    "http://json-schema.org/draft-07/schema": jsonschema_rs.Draft7,
    "http://json-schema.org/draft-06/schema": jsonschema_rs.Draft6,
    "http://json-schema.org/draft-04/schema": jsonschema_rs.Draft4,
}
_DEFAULT_DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _File(BaseModel):
    """The file's shape; each schema is checked against its metaschema after this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(
        default="report",
        description="enforce: a request with a violation is refused (400) and nothing of "
        "it is stored; report: it is stored and each violation counted",
    )
    unplanned_events: Unplanned = Field(
        default="allow",
        description="Track events the plan does not name: stored; stored and counted; or "
        "refused (in either mode)",
    )
    events: dict[str, Any] = Field(
        default_factory=dict, description="A JSON Schema for each event's properties, by name"
    )
    identify: Any | None = Field(
        default=None, description="A JSON Schema for the traits of identify calls"
    )


@dataclass(frozen=True)
class TrackingPlan:
    """A valid plan; its validators are compiled once, on first use."""

    mode: Mode = "report"
    unplanned_events: Unplanned = "allow"
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    identify: dict[str, Any] | None = None
    source: str = ""  # the file's text, as deployed

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "unplanned_events": self.unplanned_events,
                "events": self.events, "identify": self.identify}  # fmt: skip

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "") -> TrackingPlan:
        return cls(data["mode"], data["unplanned_events"], data["events"], data["identify"],
                   source)  # fmt: skip

    @cached_property
    def validators(self) -> dict[str, Any]:
        """A compiled validator per event name."""
        return {name: compile_schema(schema) for name, schema in self.events.items()}

    @cached_property
    def identify_validator(self) -> Any:
        return None if self.identify is None else compile_schema(self.identify)

    def compile(self) -> None:
        """Compile every schema now (they are otherwise compiled on first use)."""
        _ = self.validators, self.identify_validator

    def defines(self, event: str) -> dict[str, Any] | None:
        """The schema of an event's properties, if the plan names the event."""
        return self.events.get(event)


_VALIDATORS = {
    jsonschema_rs.Draft202012: jsonschema_rs.Draft202012Validator,
    jsonschema_rs.Draft201909: jsonschema_rs.Draft201909Validator,
    jsonschema_rs.Draft7: jsonschema_rs.Draft7Validator,
    jsonschema_rs.Draft6: jsonschema_rs.Draft6Validator,
    jsonschema_rs.Draft4: jsonschema_rs.Draft4Validator,
}
TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")


def compile_schema(schema: dict[str, Any]) -> Any:
    """A validator for a schema already checked by `schema_problems`. Formats (email,
    date-time, uri...) are checked: a plan that writes one means it. Nothing is fetched."""
    draft = DRAFTS.get(_draft_of(schema), jsonschema_rs.Draft202012)
    return _VALIDATORS[draft](schema, validate_formats=True, offline=True)


def _draft_of(schema: dict[str, Any]) -> str:
    given = schema.get("$schema", _DEFAULT_DRAFT)
    return str(given).rstrip("#") if isinstance(given, str) else _DEFAULT_DRAFT


_METASCHEMAS: dict[str, Any] = {}


def _metaschema(draft: str) -> Any:
    if draft not in _METASCHEMAS:
        _METASCHEMAS[draft] = jsonschema_rs.validator_for({"$ref": draft}, offline=True)
    return _METASCHEMAS[draft]


def schema_problems(schema: Any) -> Iterator[tuple[list[str | int], str]]:
    """What is wrong with a schema, each at its place inside it (empty when valid)."""
    if not isinstance(schema, dict):
        yield [], "must be a JSON Schema: a mapping such as `{type: object, properties: ...}`"
        return
    given = schema.get("$schema")
    if given is not None and _draft_of(schema) not in DRAFTS:
        yield ["$schema"], "unknown draft: use one of " + ", ".join(sorted(DRAFTS))
        return
    found = False
    for error in _metaschema(_draft_of(schema)).iter_errors(schema):
        found = True
        yield list(error.instance_path), _meta_message(error)
    for loc, ref in _refs(schema, []):
        if not ref.startswith("#"):
            yield loc, f"{ref!r}: only references inside the schema (#/$defs/...) are allowed"
            found = True
    if found:
        return
    try:
        compile_schema(schema)
    except jsonschema_rs.ValidationError as exc:  # a pattern that is no regex, say
        yield list(exc.instance_path), f"not valid JSON Schema: {exc.message}"
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        yield [], f"does not compile: {str(exc).splitlines()[0]}"


def _meta_message(error: Any) -> str:
    path = list(error.instance_path)
    if path and path[-1] == "type" and len(path) > 0:
        return "unknown type: use " + ", ".join(TYPES) + " (or a list of them)"
    return f"not valid JSON Schema: {error.message}"


def _refs(value: Any, loc: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("$ref", "$dynamicRef") and isinstance(inner, str):
                yield [*loc, key], inner
            elif key not in ("enum", "const", "examples", "default"):
                yield from _refs(inner, [*loc, key])
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _refs(inner, [*loc, i])


def load_plan(root: Path) -> TrackingPlan | None:
    """The workspace's tracking plan (None without the file); InvalidSource lists every
    problem at its position."""
    path = root / PLAN_FILE
    if not path.exists():
        return None
    source = load(path, display=PLAN_FILE)
    return plan_from(source)


def plan_from(source: Source) -> TrackingPlan:
    data = source.data if source.data is not None else {}
    if not isinstance(data, dict):
        raise InvalidSource(
            [
                source.problem(
                    [], "the tracking plan is a mapping: mode, unplanned_events, events, identify"
                )
            ]
        )
    problems: list[Problem] = []
    parsed = None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        problems += source.problems_from(exc)
    # Every schema is checked even when the file's shape is wrong: all problems at once.
    events = data.get("events")
    events = events if isinstance(events, dict) else {}
    for name in events:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            message = "an event name is 1 to 200 characters, as track calls send it"
            problems.append(source.problem(["events", name], message, key=True))
    sections: list[tuple[Loc, Any]] = [(["events", n], s) for n, s in events.items()]
    if data.get("identify") is not None:
        sections.append((["identify"], data["identify"]))
    for base, schema in sections:
        for loc, message in schema_problems(schema):
            problems.append(source.problem([*base, *loc], message))
    if problems or parsed is None:
        raise InvalidSource(problems)
    return TrackingPlan(parsed.mode, parsed.unplanned_events, dict(parsed.events),
                        parsed.identify, source.text)  # fmt: skip
