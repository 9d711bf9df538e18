"""Conditions in journeys: sandboxed Jinja2 expressions over `user`, `event` and `journey`.

A missing attribute is falsy and compares false; it never crashes a journey mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from jinja2 import ChainableUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment


class Missing(ChainableUndefined):
    """An attribute the profile or event does not have: chains, is falsy, compares false."""

    __slots__ = ()

    def _false(self, *_: object) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def __hash__(self) -> int:
        return 0


ENVIRONMENT = SandboxedEnvironment(undefined=Missing, autoescape=False)

CONDITION_NAMES = ("user", "event", "journey")


@lru_cache(maxsize=4096)
def syntax_error(source: str) -> str | None:
    """Return a readable parse error for an expression, or None when it parses."""
    if not isinstance(source, str) or not source.strip():
        return "an expression must be a non-empty string"
    try:
        ENVIRONMENT.compile_expression(source)
    except TemplateSyntaxError as exc:
        return f"expression does not parse: {exc.message}"
    return None


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Callable[..., Any]:
    return ENVIRONMENT.compile_expression(source)


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate an expression; raises on errors such as arithmetic on a missing value."""
    return _compiled(source)(**context)


def holds(source: str | None, context: Mapping[str, Any]) -> bool:
    """Truth of a condition; no condition holds, and a condition that errors does not."""
    if source is None:
        return True
    try:
        return bool(evaluate(source, context))
    except Exception:
        # A condition must never crash a journey; an error is treated as "does not match".
        return False


def user_context(user_id: str, traits: Mapping[str, Any]) -> dict[str, Any]:
    """The `user` seen by conditions and templates: traits at the top level plus `id`."""
    return {**traits, "id": user_id, "traits": dict(traits)}


def event_context(
    name: str, properties: Mapping[str, Any], timestamp: str | None = None
) -> dict[str, Any]:
    """The `event` seen by conditions and templates."""
    return {"name": name, "properties": dict(properties), "timestamp": timestamp}


class EventLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def properties(self) -> dict[str, Any]: ...
    @property
    def timestamp(self) -> datetime: ...


def context(
    user_id: str,
    traits: Mapping[str, Any],
    event: EventLike | None,
    journey: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything a condition or template sees: `user`, `event` and `journey`."""
    return {
        "user": user_context(user_id, traits),
        "event": event_context(event.name, event.properties, event.timestamp.isoformat())
        if event
        else {},
        "journey": dict(journey),
    }
