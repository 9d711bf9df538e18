"""Segments that start and end journeys: entering a segment enters a journey, leaving
it exits the journey; entries and exits are events and membership rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
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


async def test_segments_are_readable_by_api_and_command_line(
    make_stack: StackFactory, engine: AsyncEngine, postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    stack = await make_stack({"nudge": NUDGE}, workspace={"files": FILES})
    for user in ("u1", "u2"):
        await stack.track(user, "Product Added", {"sku": "A"})
    await stack.track("u2", "Order Completed", {"revenue": 5})

    listed = (await stack.call("GET", "/v1/segments")).json()
    assert [(s["key"], s["members"], s["entered_24h"], s["exited_24h"]) for s in listed] == [
        ("active_cart", 1, 2, 1)
    ]
    detail = (await stack.call("GET", "/v1/segments/active_cart?days=3")).json()
    assert [(d["members"], d["entered"], d["exited"]) for d in detail["history"]] == [
        (0, 0, 0), (0, 0, 0), (1, 2, 1),
    ]  # fmt: skip
    members = (await stack.call("GET", "/v1/segments/active_cart/members")).json()
    assert [m["user_id"] for m in members] == ["u1"]
    missing = await stack.call("GET", "/v1/segments/lapsed")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no segment 'lapsed' (known: active_cart)"
    audit = await rows(
        engine, "SELECT action, subject FROM audit_log WHERE action LIKE 'segments%'"
    )
    assert audit == [{"action": "segments.members.read", "subject": "active_cart"}]

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    runner = CliRunner()

    async def run(*args: str) -> str:
        result = await asyncio.to_thread(runner.invoke, app, list(args))  # it runs a loop
        assert result.exit_code == 0, result.output
        return result.stdout

    listing = await run("segments", "list")
    assert listing.splitlines()[1].split()[:4] == ["active_cart", "1", "2", "1"]
    assert "u1  since" in await run("segments", "show", "active_cart", "--members", "5")
    shown = await run("traits", "show", "u1")
    assert "in segment active_cart since" in shown
    assert [line.split()[:2] for line in shown.splitlines()[:2]] == [
        ["cart_adds_1h", "1"], ["orders_count", "0"],
    ]  # fmt: skip
    # A stricter condition, not deployed: nobody would be in it, u1 would leave.
    (stack.workspace / "segments.yaml").write_text(SEGMENTS.replace("> 0 and", "> 5 and"))
    preview = await run("segments", "preview", "--workspace", str(stack.workspace))
    assert preview.splitlines()[0].startswith("2 users evaluated")
    assert preview.splitlines()[2].split() == ["active_cart", "0", "1", "0", "1"]
    unknown = await asyncio.to_thread(runner.invoke, app, ["segments", "show", "nope"])
    assert unknown.exit_code == 1


LAPSED_FILES = {
    "traits.yaml": "traits:\n  days_since_last_order: {days_since: Order Completed}\n",
    "segments.yaml": "segments:\n  lapsed: {when: user.days_since_last_order >= 90}\n",
}
WIN_BACK = """
journey: win_back
name: Win back
trigger: {event: Segment Entered, segment: lapsed}
goal: {event: Order Completed, within: 30d, exit: false}
start: wait
steps:
  wait:
    wait: 7d
    next: done
  done:
    exit: {}
"""


async def test_the_event_that_puts_a_user_in_a_segment_does_not_convert_what_it_starts(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"win_back": WIN_BACK}, workspace={"files": LAPSED_FILES})
    old = (datetime.now(UTC) - timedelta(days=120)).isoformat()
    order = {"userId": "u1", "event": "Order Completed", "properties": {"revenue": 9}}
    assert (await stack.send("/v1/track", {**order, "timestamp": old})).status_code == 200
    assert (await stack.state("win_back", "u1")).step == "wait"
    [entered] = await rows(engine, "SELECT converted_at FROM enrollments")
    assert entered["converted_at"] is None
    # A new order is the goal (and ends the user's stay in `lapsed`).
    await stack.track("u1", "Order Completed", {"revenue": 30})
    [converted] = await rows(engine, "SELECT converted_at, conversion_value FROM enrollments")
    assert converted["converted_at"] is not None
    assert converted["conversion_value"] == 30
