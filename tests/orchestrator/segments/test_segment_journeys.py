"""Segments that start and end journeys: entering a segment enters a journey, leaving
it exits the journey; entries and exits are events and membership rows."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.support.db import rows

TRAITS = """
traits:
  orders_count:
    count: Order Completed
  cart_adds_1h:
    count: {event: Product Added, window: 1h}
  whereabouts:
    expression: "[user.city, user.country]"
"""
SEGMENTS = """
segments:
  active_cart:
    description: Added to the cart in the last hour, never ordered
    when: user.cart_adds_1h > 0 and user.orders_count == 0
"""
NUDGE = """
journey: nudge
name: Nudge
trigger: {event: Segment Entered, segment: active_cart}
exit_on:
  - {event: Segment Exited, segment: active_cart}
start: wait
steps:
  wait:
    wait: 1d
    next: hello
  hello:
    send: {channel: in_app, template: hello}
    next: done
  done:
    exit: {}
"""
FILES = {"traits.yaml": TRAITS, "segments.yaml": SEGMENTS}


async def test_entering_a_segment_starts_a_journey_and_leaving_it_exits(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"nudge": NUDGE}, workspace={"files": FILES})
    await stack.track("u1", "Product Added", {"sku": "A"})
    assert (await stack.state("nudge", "u1")).step == "wait"
    members = await rows(engine, "SELECT segment_key, exited_at FROM segment_memberships")
    assert members == [{"segment_key": "active_cart", "exited_at": None}]

    await stack.track("u1", "Order Completed", {"revenue": 20})
    result = await stack.result("nudge", "u1")
    assert result.status == "exited"
    assert result.messages_sent == 0
    announced = await rows(
        engine,
        "SELECT event, properties FROM events WHERE source = 'product:segments' ORDER BY id",
    )
    assert announced == [
        {"event": "Segment Entered", "properties": {"segment": "active_cart"}},
        {"event": "Segment Exited", "properties": {"segment": "active_cart"}},
    ]
    profile = (await stack.call("GET", "/v1/users/u1")).json()
    # A missing trait inside an expression's value is null, never an error.
    assert profile["traits"] == {"orders_count": 1, "cart_adds_1h": 1,
                                 "whereabouts": [None, None]}  # fmt: skip
    assert profile["segments"] == []
