"""Our own spans: inside a trace only, never starting one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace

P = ParamSpec("P")
R = TypeVar("R")

_tracer = trace.get_tracer("orchestrator")  # a proxy: it follows the provider set later


def in_trace() -> bool:
    """Whether a span is current: a traced request or activity is under way."""
    return trace.get_current_span().get_span_context().is_valid


AsyncFunction = Callable[P, Coroutine[Any, Any, R]]


def child_span(name: str) -> Callable[[AsyncFunction[P, R]], AsyncFunction[P, R]]:
    """Run the coroutine function in a span named `name` when a trace is under way (the
    request's, carried in memory into the tasks it starts); otherwise untraced. So a
    process whose requests are not traced records nothing, whatever provider is set."""

    def decorate(function: AsyncFunction[P, R]) -> AsyncFunction[P, R]:
        @functools.wraps(function)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if not in_trace():
                return await function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await function(*args, **kwargs)

        return run

    return decorate


def annotate(**attributes: str | int) -> None:
    """Set attributes on the current span (nothing when there is none)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
