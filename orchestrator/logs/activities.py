"""Binding the log ids of each activity: its workflow (and journey), its type, the user
and message its input names, and its trace."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from orchestrator.logs.ids import bind, journey_of


class ActivityLogIds(Interceptor):
    """A worker interceptor: every activity's log lines carry its ids."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Bind(next)


class _Bind(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        # Bound for the rest of the activity's own task (the SDK runs each in one), not
        # just this call: the SDK's line about a failed attempt, logged after, has them.
        found = {"journey_key": journey_of(info.workflow_id or ""), **ids_in(input.args)}
        bind(workflow_id=info.workflow_id, activity_type=info.activity_type, **found,
             **trace_ids())  # fmt: skip
        return await self.next.execute_activity(input)


def trace_ids() -> dict[str, str]:
    """The attempt's span (the tracing interceptor's, when on), kept for lines logged
    after it ended."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def ids_in(args: Iterable[Any]) -> dict[str, str]:
    """The user, message and journey an activity's input names: fields of the input
    (`SendInput`) or of the message it carries (`ArbitrateInput.message`)."""
    found: dict[str, str] = {}
    for arg in args:
        for part in (arg, getattr(arg, "message", None)):
            for name in ("user_id", "message_id", "journey_key"):
                value = getattr(part, name, None)
                if isinstance(value, str) and value:
                    found.setdefault(name, value)
    return found
