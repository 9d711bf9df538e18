"""Sends are exactly once per message id, whatever retries happen."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from channels.base import Receipt
from orchestrator.journey_store import PostgresJourneyStore
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver, Script

ONE_SEND = """
journey: once
name: Once
trigger: {event: Signed Up}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


class LosesTheFirstAnswer(PostgresJourneyStore):
    """The real store, except that the first delivery's bookkeeping "crashes" after commit.

    This is what a worker dying between recording the delivery and reporting the
    activity's completion looks like to Temporal: the activity is retried.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.crashes = 0

    async def mark_sent(self, message_id: str, receipt: Receipt) -> None:
        await super().mark_sent(message_id, receipt)
        if self.crashes == 0:
            self.crashes += 1
            raise ConnectionError("worker lost its connection after recording the delivery")


async def test_a_retried_send_activity_does_not_deliver_twice(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    store = LosesTheFirstAnswer(engine)
    stack = await make_stack({"once": ONE_SEND}, store=store)
    await stack.track("u1", "Signed Up")
    result = await stack.result("once", "u1")
    assert store.crashes == 1  # the activity did fail once and was retried
    assert result.messages_sent == 1
    assert len(receiver.requests) == 1
    [message] = await rows(engine, "SELECT status, attempts FROM messages")
    assert message == {"status": "sent", "attempts": 1}


async def test_provider_errors_are_retried_with_the_same_message_id(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    receiver.script("/email", Script(503), Script(429, headers={"retry-after": "1"}))
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    result = await stack.result("once", "u1")
    assert result.messages_sent == 1
    assert [r.msg_id for r in receiver.requests] == [receiver.requests[0].msg_id] * 3
    [message] = await rows(engine, "SELECT status, attempts, status_code FROM messages")
    assert message == {"status": "sent", "attempts": 3, "status_code": 200}


async def test_a_refused_message_is_failed_once_and_the_journey_goes_on(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    receiver.script("/email", Script(400))
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    result = await stack.result("once", "u1")
    assert (result.status, result.messages_sent) == ("completed", 0)
    assert len(receiver.requests) == 1
    [message] = await rows(engine, "SELECT status, status_code, error FROM messages")
    assert (message["status"], message["status_code"]) == ("failed", 400)
    assert "answered 400" in message["error"]
    [visit] = await rows(engine, "SELECT outcome FROM enrollment_steps WHERE step = 'hello'")
    assert visit["outcome"].startswith("failed:")


async def test_a_fallback_list_goes_out_on_its_first_channel(
    make_stack: StackFactory,
    receiver: Receiver,
) -> None:
    journey = ONE_SEND.replace("channel: email", "channels: [push, email]")
    stack = await make_stack({"once": journey})
    await stack.track("u1", "Signed Up")
    await stack.result("once", "u1")
    assert [r.path for r in receiver.requests] == ["/push"]


async def test_a_message_too_large_for_its_channel_once_rendered_fails_without_sending(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    journey = ONE_SEND.replace("channel: email", "channel: push")
    templates = {
        "hello": """
            push:
              title: "Hi {{ user.first_name }}"
              body: "Your notes"
              data: {notes: "{{ user.notes }}"}
        """
    }
    stack = await make_stack({"once": journey}, templates=templates)
    await stack.identify("u1", {"first_name": "A" * 500, "notes": "n" * 5000})
    await stack.track("u1", "Signed Up")
    result = await stack.result("once", "u1")
    assert (result.status, result.messages_sent) == ("completed", 0)
    assert receiver.requests == []
    [visit] = await rows(engine, "SELECT outcome FROM enrollment_steps WHERE step = 'hello'")
    assert "4096" in visit["outcome"]
    # arbitration gave back the place it had reserved for the message
    [state] = await rows(engine, "SELECT state FROM arbitration_requests")
    assert state["state"] == "released"
