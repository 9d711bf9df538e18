"""What a journey costs Temporal (generation 2): arbitration inside the send activity,
search attributes upserted where the user comes to rest, no version markers; and
journeys started before (generation 1) keep the path their history recorded."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType

from tests.conftest import StackFactory
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from tests.support.workspace import REACH_EVERYONE
from workflows import search

THREE_SENDS = """
journey: greet
name: Three sends, then a rest
trigger: {event: Signed Up}
start: one
steps:
  one:
    send: {channel: email, template: hello}
    next: two
  two:
    send: {channel: push, template: hello}
    next: three
  three:
    send: {channel: in_app, template: hello}
    next: rest
  rest:
    wait: 1d
    next: done
  done:
    exit: {}
"""
QUIET_PUSH = REACH_EVERYONE + 'quiet_hours:\n  - {channels: [push], start: "00:00", end: "23:59"}\n'


def kinds(events: list[object]) -> list[str]:
    return [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events]  # type: ignore[attr-defined]


async def test_three_sends_then_a_wait_cost_one_upsert_and_one_marker(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = await make_stack({"greet": THREE_SENDS})
    await stack.track("u1", "Signed Up")

    async def resting() -> bool:
        return (await stack.state("greet", "u1")).status == "waiting"

    await eventually(resting)
    handle = stack.handle("greet", "u1")
    history = kinds(list((await handle.fetch_history()).events))
    until_rest = history[: history.index("TIMER_STARTED") + 1]
    # the three sends: one activity each, no local activity asking arbitration first
    assert until_rest.count("ACTIVITY_TASK_SCHEDULED") == 3
    # where the user rests: one upsert (step and status together) and one marker (the
    # progress written to Postgres), then the timer
    assert until_rest.count("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES") == 1
    assert until_rest.count("MARKER_RECORDED") == 1
    assert until_rest[-3:] == ["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES", "MARKER_RECORDED",
                               "TIMER_STARTED"]  # fmt: skip
    # what the Temporal UI shows at rest
    described = await handle.describe()
    attributes = described.typed_search_attributes
    assert attributes.get(search.JOURNEY_STEP) == "rest"
    assert attributes.get(search.JOURNEY_STATUS) == "waiting"
    assert len(receiver.requests) == 3


async def test_a_deferral_comes_back_from_the_send_and_waits_on_a_timer(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = await make_stack({"greet": THREE_SENDS}, policy=QUIET_PUSH)
    await stack.track("u1", "Signed Up")

    async def deferred() -> bool:
        return (await stack.state("greet", "u1")).deferred is not None

    await eventually(deferred)
    handle = stack.handle("greet", "u1")
    described = await handle.describe()
    assert described.typed_search_attributes.get(search.JOURNEY_STEP) == "two"
    assert described.typed_search_attributes.get(search.JOURNEY_STATUS) == "waiting"
    history = kinds(list((await handle.fetch_history()).events))
    # the push's send activity answered "deferred": a timer, nothing sent on push
    assert history.count("ACTIVITY_TASK_SCHEDULED") == 2
    assert history[-1] == "TIMER_STARTED"
    assert [r.path for r in receiver.requests] == ["/email"]
    result = await stack.result("greet", "u1")  # time skips past the quiet hours
    assert result.messages_sent == 3
    history = kinds(list((await handle.fetch_history()).events))
    assert history.count("ACTIVITY_TASK_SCHEDULED") == 4  # the push asked again, and sent
