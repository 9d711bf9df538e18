"""Checking messages against the plan, on the ingestion path.

A message that passes costs one dict lookup and one compiled validator's `is_valid`;
only a failing one is walked for its errors. Each violation names the field inside
the message (`properties.price`, `traits.email`, `event`) and a problem that stays the
same from one message to the next (`type: number`, `required`, `enum`), so they can be
counted; the detail tells what was expected, never the value sent (it may be personal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.tracking import BadInput, Incoming
from orchestrator.tracking_plan.plan import TrackingPlan

_INDEX = re.compile(r"\[\d+\]")
IDENTIFY = "identify"
TRACK = "track"


@dataclass(frozen=True, slots=True)
class Violation:
    """One way one message breaks the plan."""

    message_id: str  # as the source sent it (or derived from its content)
    type: str  # track | identify
    event: str  # the event name; "" for identify
    field: str  # inside the message: properties.price, traits.email, event
    problem: str  # stable, for counting: "type: number", "required", "unplanned"
    detail: str  # readable, without the value sent
    refused: bool  # under enforce (or an unplanned event under `refuse`)

    @property
    def counted_field(self) -> str:
        """The field with list positions left out (`properties.items[].sku`): counted once
        whichever item broke it."""
        return _INDEX.sub("[]", self.field)

    def describe(self) -> str:
        what = "identify traits" if self.type == IDENTIFY else f"event {self.event!r}"
        return f"tracking plan: {what}: {self.detail}"


def screen(plan: TrackingPlan | None, batch: list[Incoming], *, batched: bool) -> list[Violation]:
    """The violations a request may carry (to count); BadInput naming the first field
    the plan refuses (`batch[3].properties.price`), so that nothing is stored."""
    if plan is None:
        return []
    found: list[Violation] = []
    for i, item in enumerate(batch):
        for violation in check(plan, item):
            if violation.refused:
                at = f"batch[{i}].{violation.field}" if batched else violation.field
                raise BadInput(at, violation.describe())
            found.append(violation)
    return found


def check(plan: TrackingPlan, item: Incoming) -> list[Violation]:
    """Every violation of one message (none for types the plan does not cover: page,
    screen, group, alias)."""
    if item.type == TRACK:
        name = item.event or ""
        validator = plan.validators.get(name)
        if validator is None:
            if plan.unplanned_events == "allow":
                return []
            return [Violation(item.message_id, TRACK, name, "event", "unplanned",
                              f"{name!r} is not in the tracking plan",
                              plan.unplanned_events == "refuse")]  # fmt: skip
        if validator.is_valid(item.properties):
            return []
        return _violations(plan, validator, plan.events[name], item, TRACK, name, "properties",
                           item.properties)  # fmt: skip
    if item.type == IDENTIFY and (validator := plan.identify_validator) is not None:
        if validator.is_valid(item.traits):
            return []
        assert plan.identify is not None
        return _violations(plan, validator, plan.identify, item, IDENTIFY, "", "traits",
                           item.traits)  # fmt: skip
    return []


def _violations(
    plan: TrackingPlan,
    validator: Any,
    schema: dict[str, Any],
    item: Incoming,
    kind: str,
    event: str,
    base: str,
    instance: Any,
) -> list[Violation]:
    refused = plan.mode == "enforce"
    found: dict[tuple[str, str], Violation] = {}
    for error in validator.iter_errors(instance):
        for field, problem, detail in _describe(error, schema, base):
            found.setdefault(
                (field, problem),
                Violation(
                    item.message_id, kind, event, field, problem, f"{field}: {detail}", refused
                ),
            )
    return list(found.values())


def field_path(base: str, path: list[str | int]) -> str:
    """`properties.items[2].sku`, as ingestion names fields."""
    name = base
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _describe(error: Any, schema: dict[str, Any], base: str) -> list[tuple[str, str, str]]:
    """(field, problem, detail) for one validation error."""
    kind = error.kind
    at = field_path(base, list(error.instance_path))
    keyword = next((p for p in reversed(error.schema_path) if isinstance(p, str)), "")
    match type(kind).__name__:
        case "Required":
            return [(f"{at}.{kind.property}", "required", "missing; the plan requires it")]
        case "AdditionalProperties":
            return [(f"{at}.{name}", "additionalProperties",
                     "not in the plan, which allows no other properties here")
                    for name in kind.unexpected]  # fmt: skip
        case "Type":
            expected = "|".join(kind.types)
            got = _json_type(error.instance)
            return [(at, f"type: {expected}", f"expected {expected}, got {got}")]
        case "Enum":
            return [(at, "enum", "not one of the values the plan allows")]
        case "Constant":
            return [(at, "const", "not the value the plan requires")]
        case "Format":
            return [(at, f"format: {kind.format}", f"not a valid {kind.format}")]
    limit = _at(schema, list(error.schema_path))
    if isinstance(limit, int | float | str):
        return [(at, f"{keyword}: {limit}", f"fails {keyword} {limit}")]
    return [(at, keyword, f"fails `{keyword}` of the plan")]


def _at(schema: Any, path: list[str | int]) -> Any:
    for part in path:
        try:
            schema = schema[part]
        except (KeyError, IndexError, TypeError):
            return None
    return schema


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
