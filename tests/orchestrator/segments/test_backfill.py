"""A trait added or changed, or a segment added, after events were stored: the upkeep
backfills every known user from the stored events, and segment entries it finds start
journeys like any other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.segments.upkeep import start_upkeep
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.stack import Stack, eventually

V1 = "traits:\n  orders_count:\n    count: Order Completed\n"
V2 = """
traits:
  orders_count:
    count: {event: Order Completed, window: 1d}
  revenue_total:
    sum: {event: Order Completed, property: revenue}
"""
SEGMENTS = "segments:\n  big_spender:\n    when: user.revenue_total >= 100\n"
THANKS = """
journey: thanks
name: Thanks
trigger: {event: Segment Entered, segment: big_spender}
start: hello
steps:
  hello:
    send: {channel: in_app, template: hello}
    next: done
  done:
    exit: {}
"""


async def _order(stack: Stack, user: str, revenue: float, days_ago: float) -> None:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    body = {"userId": user, "event": "Order Completed", "properties": {"revenue": revenue},
            "timestamp": at.isoformat()}  # fmt: skip
    assert (await stack.send("/v1/track", body)).status_code == 200


async def _profiles(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each user's traits as the profile API shows them."""
    found = {}
    for user in ("u1", "u2", "u3"):
        response = await stack.call("GET", f"/v1/users/{user}")
        assert response.status_code == 200, response.text
        found[user] = response.json()["traits"]
    return found


async def test_changed_definitions_are_backfilled_from_stored_events(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    daily = "segments: {refresh_every: 1d}\n"  # the upkeep need not wake more often here
    stack = await make_stack({}, workspace={"files": {"traits.yaml": V1}, "config": daily})
    await _order(stack, "u1", 120.0, days_ago=3)
    await _order(stack, "u1", 30.0, days_ago=0.1)
    await _order(stack, "u2", 30.0, days_ago=0.2)
    await stack.identify("u3", {"first_name": "Cy"})  # a profile with no events
    assert await _profiles(stack) == {"u1": {"orders_count": 2}, "u2": {"orders_count": 1},
                      "u3": {"first_name": "Cy"}}  # fmt: skip

    root = Path(stack.workspace)
    (root / "traits.yaml").write_text(V2)
    (root / "segments.yaml").write_text(SEGMENTS)
    (root / "journeys" / "thanks.yaml").write_text(THANKS)
    await stack.redeploy()
    await start_upkeep(stack.client, stack.services.settings.task_queue, every=timedelta(days=1))

    async def backfilled() -> bool:
        found = await rows(
            engine, "SELECT backfilled_at FROM segment_definitions WHERE version = 2"
        )
        return bool(found and found[0]["backfilled_at"])

    await eventually(backfilled)
    assert await _profiles(stack) == {
        "u1": {"orders_count": 1, "revenue_total": 150.0},
        "u2": {"orders_count": 1, "revenue_total": 30.0},
        "u3": {"first_name": "Cy", "orders_count": 0, "revenue_total": 0.0},
    }
    members = await rows(engine, "SELECT segment_key, user_id FROM segment_memberships")
    assert members == [{"segment_key": "big_spender", "user_id": "u1"}]
    result = await stack.result("thanks", "u1")
    assert result.messages_sent == 1
    entered = await rows(engine, "SELECT user_id FROM enrollments WHERE journey_key = 'thanks'")
    assert entered == [{"user_id": "u1"}]
