"""Keyed journeys: one instance per user and key (two carts, two instances), each
hearing only its own key's events unless a match says `any_instance`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus

from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from workflows import search
from workflows.messages import JourneyResult

CARTS = """
journey: carts
name: Carts
trigger: {event: Cart Abandoned}
instance: event.properties.cart_id
re_entry: always
exit_on:
  - {event: Unsubscribed, any_instance: true}
goal: {event: Order Completed, within: 7d}
start: listen
steps:
  listen:
    wait_for: {event: Cart Emptied, timeout: 1h, on_event: done, on_timeout: remind}
  remind:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def _statuses(engine: AsyncEngine) -> dict[str, tuple[str, bool]]:
    found = await rows(engine, "SELECT instance, status, converted_at FROM enrollments ORDER BY id")
    return {r["instance"]: (r["status"], r["converted_at"] is not None) for r in found}


async def test_two_carts_are_two_instances_each_hearing_its_own_events(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"carts": CARTS})
    await stack.identify("u1", {"email": "u1@example.com"})
    await stack.track("u1", "Cart Abandoned", {"cart_id": "A"})
    await stack.track("u1", "Cart Abandoned", {"cart_id": "B"})
    await stack.track("u1", "Cart Abandoned", {"cart_id": "C"})
    await stack.track("u1", "Cart Abandoned", {})  # no key: no instance
    await stack.track("u1", "Cart Abandoned", {"cart_id": "A"})  # A is running: no second
    a, b, c = (_handle(stack, k) for k in "ABC")
    assert a.id == "journey:carts:u1:A"
    description = await a.describe()
    assert description.typed_search_attributes.get(search.JOURNEY_INSTANCE) == "A"
    # A's order converts A only; B's emptied cart ends B only; C is reminded.
    await stack.track("u1", "Order Completed", {"cart_id": "A", "revenue": 20})
    await stack.track("u1", "Cart Emptied", {"cart_id": "B"})
    await stack.track("u1", "Cart Emptied", {"cart_id": "nobody's"})
    for handle in (a, b, c):
        await eventually(lambda h=handle: _closed(h), skip=stack.skip)
    assert (await a.result()).status == "converted"
    assert (await b.result()).end_reason == "exit step 'done'"
    assert (await c.result()).messages_sent == 1
    assert await _statuses(engine) == {
        "A": ("converted", True),
        "B": ("completed", False),
        "C": ("completed", False),
    }
    [email] = receiver.requests
    assert email.json["data"]["recipient"]["email"] == "u1@example.com"


async def test_an_event_marked_any_instance_reaches_every_instance(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"carts": CARTS})
    for cart in ("A", "B"):
        await stack.track("u1", "Cart Abandoned", {"cart_id": cart})
    await stack.track("u1", "Unsubscribed")
    for cart in ("A", "B"):
        handle = _handle(stack, cart)
        await eventually(lambda h=handle: _closed(h), skip=stack.skip)
        assert (await handle.result()).status == "exited"
    assert await _statuses(engine) == {"A": ("exited", False), "B": ("exited", False)}


def test_keys_never_make_two_instances_share_a_workflow() -> None:
    assert search.workflow_id("carts", "a:b", "c") != search.workflow_id("carts", "a", "b:c")
    assert search.workflow_id("carts", "u1") == "journey:carts:u1"


def _handle(stack: Any, cart: str) -> Any:
    workflow_id = search.workflow_id("carts", "u1", cart)
    return stack.client.get_workflow_handle(workflow_id, result_type=JourneyResult)


async def _closed(handle: Any) -> bool:
    description = await handle.describe()
    return description.status != WorkflowExecutionStatus.RUNNING
