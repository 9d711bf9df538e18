"""Events that arrive between waits: a `wait_for` sees what the journey heard since the
previous wait ended, whatever a send in between cost in real time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from tests.conftest import StackFactory
from tests.support.receiver import Receiver, Script
from tests.workflows.test_steps import _step_is

SEND_THEN_LISTEN = """
journey: nudge
name: Nudge unless they check out
trigger: {event: Cart Updated}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: listen
  listen:
    wait_for: {event: Checkout Started, timeout: 1d, on_event: thanks, on_timeout: nudge}
  thanks:
    exit: {}
  nudge:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_an_event_during_a_slow_send_counts_for_the_next_wait(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = await make_stack({"nudge": SEND_THEN_LISTEN})
    await stack.identify("u1", {"email": "u1@example.com"})
    receiver.script("/email", Script(200, delay=3.0))  # a slow provider
    await stack.track("u1", "Cart Updated")
    await asyncio.wait_for(receiver.arriving.wait(), 30)  # the send is under way...
    await stack.track("u1", "Checkout Started")  # ...when the user checks out
    result = await stack.result("nudge", "u1")
    assert (result.status, result.end_reason, result.messages_sent) == (
        "completed",
        "exit step 'thanks'",
        1,
    )
    state = await stack.state("nudge", "u1")
    listen = next(v for v in state.recent_steps if v.step == "listen")
    assert listen.outcome == "got Checkout Started (heard earlier)"


WAIT_THEN_LISTEN = """
journey: look_back
name: Look back
trigger: {event: Cart Updated}
start: pause
steps:
  pause:
    wait: 2h
    next: listen
  listen:
    wait_for:
      event: Checkout Started
      timeout: 1d
      on_event: thanks
      on_timeout: nudge
      {since}
  thanks:
    exit: {}
  nudge:
    exit: {}
"""


async def _outcome(
    make_stack: StackFactory, env: WorkflowEnvironment, since: str, checkout_after: timedelta
) -> str:
    journey = WAIT_THEN_LISTEN.replace("{since}", since)
    stack = await make_stack({"look_back": journey})
    await stack.track("u1", "Cart Updated")
    await env.sleep(checkout_after)
    await stack.track("u1", "Checkout Started")
    assert await _step_is(stack, "look_back", "u1", "pause", "waiting")
    result = await stack.result("look_back", "u1")
    assert result.end_reason is not None
    return result.end_reason


async def test_by_default_a_wait_does_not_see_events_from_before_the_previous_wait_ended(
    make_stack: StackFactory, time_skipping: WorkflowEnvironment
) -> None:
    outcome = await _outcome(make_stack, time_skipping, "", timedelta(minutes=30))
    assert outcome == "exit step 'nudge'"


async def test_since_entry_sees_every_event_heard_since_entry(
    make_stack: StackFactory, time_skipping: WorkflowEnvironment
) -> None:
    outcome = await _outcome(make_stack, time_skipping, "since: entry", timedelta(minutes=30))
    assert outcome == "exit step 'thanks'"


async def test_since_a_duration_looks_back_that_far_before_the_wait(
    make_stack: StackFactory, time_skipping: WorkflowEnvironment
) -> None:
    # The wait starts 2h after entry: 1h back reaches events from 1h in, not 30m in.
    assert (
        await _outcome(make_stack, time_skipping, "since: 1h", timedelta(minutes=90))
        == "exit step 'thanks'"
    )


async def test_since_a_duration_does_not_reach_older_events(
    make_stack: StackFactory, time_skipping: WorkflowEnvironment
) -> None:
    assert (
        await _outcome(make_stack, time_skipping, "since: 1h", timedelta(minutes=30))
        == "exit step 'nudge'"
    )
