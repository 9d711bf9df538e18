"""Every kind of computed trait, kept incrementally, against a brute-force computation
over the same events: as events arrive (in any order, in several requests) and as time
passes with no event (on the time-skipping server, the upkeep workflow moves them)."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.segments.definitions import Trait, load_definitions
from orchestrator.segments.upkeep import start_upkeep
from tests.conftest import StackFactory
from tests.support.clock import ManualClock
from tests.support.stack import Stack

TRAITS = """
traits:
  orders_count:
    count: Order Completed
  orders_30d:
    count: {event: Order Completed, window: 30d}
  revenue_total:
    sum: {event: Order Completed, property: revenue}
  revenue_30d:
    sum: {event: Order Completed, property: revenue, window: 30d}
  average_order:
    average: {event: Order Completed, property: revenue}
  average_order_7d:
    average: {event: Order Completed, property: revenue, window: 7d}
  smallest_order:
    min: {event: Order Completed, property: revenue}
  largest_order_14d:
    max: {event: Order Completed, property: revenue, window: 14d}
  first_order_at:
    first_time: Order Completed
  last_view_at:
    last_time: Product Viewed
  days_since_last_order:
    days_since: Order Completed
  categories_viewed:
    distinct_count: {event: Product Viewed, property: item.category}
  categories_viewed_7d:
    distinct_count: {event: Product Viewed, property: item.category, window: 7d}
  favourite_category:
    most_frequent: {event: Product Viewed, property: item.category}
  favourite_category_10d:
    most_frequent: {event: Product Viewed, property: item.category, window: 10d}
  engagement:
    count: {event: Product Viewed, half_life: 7d}
  spend_trend:
    sum: {event: Order Completed, property: revenue, half_life: 14d}
  shoe_views:
    count: {event: Product Viewed, where: "event.properties.item.category == 'shoes'"}
  abandoned_browse:
    sequence: {first: Product Viewed, then_not: Order Completed, within: 1d}
  bought_after_view:
    sequence: {first: Product Viewed, then: Order Completed, within: 2d}
  value_per_order:
    expression: "user.revenue_30d / user.orders_30d if user.orders_30d else 0"
"""
SEGMENTS = """
segments:
  lapsed:
    when: user.days_since_last_order >= 20 and user.orders_count > 0
  browsing:
    when: user.categories_viewed_7d >= 2
"""
CATEGORIES = ["shoes", "outerwear", "socks", "bags"]
DAY = 86_400.0


def _events(rng: random.Random, now: float, user: str) -> list[dict[str, Any]]:
    """A user's history over the last 45 days: views (some with no category) and orders
    (some without revenue, one with revenue given as text)."""
    out = []
    for _ in range(rng.randint(5, 40)):
        at = now - rng.uniform(0, 45 * DAY)
        if rng.random() < 0.3:
            props: dict[str, Any] = {"revenue": round(rng.uniform(5, 200), 2)}
            if rng.random() < 0.1:
                props = {"revenue": "lots"} if rng.random() < 0.5 else {}
            out.append({"event": "Order Completed", "properties": props, "at": at})
        else:
            item = {"category": rng.choice(CATEGORIES)} if rng.random() < 0.9 else {}
            out.append({"event": "Product Viewed", "properties": {"item": item}, "at": at})
    out.append({"event": "Order Completed", "properties": {"revenue": 50.0}, "at": now - 2 * DAY})
    return out


def _prop(properties: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(properties, dict) or part not in properties:
            return None
        properties = properties[part]
    return properties


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def brute(name: str, trait: Trait, happened: list[dict[str, Any]], now: float,
          values: dict[str, Any]) -> Any:  # fmt: skip
    """What the trait is at `now`, from every event, the slow and obvious way."""
    if trait.expression is not None:
        return values["revenue_30d"] / values["orders_30d"] if values.get("orders_30d") else 0
    if trait.sequence is not None:
        seq = trait.sequence
        firsts = [e["at"] for e in happened if e["event"] == seq.first]
        if not firsts:
            return False
        first, within = max(firsts), seq.within.total_seconds()
        follower = seq.then or seq.then_not
        followed = any(
            e["event"] == follower and first <= e["at"] <= first + within for e in happened
        )
        return followed if seq.then else (now >= first + within and not followed)
    over = trait.over
    assert over is not None
    chosen = [e for e in happened if e["event"] == over.event]
    if over.where:
        chosen = [e for e in chosen if _prop(e["properties"], "item.category") == "shoes"]
    if over.window is not None:
        chosen = [e for e in chosen if e["at"] > now - over.window.total_seconds()]
    kind = trait.kind
    if kind in ("first_time", "last_time", "days_since"):
        if not chosen:
            return None
        at = (min if kind == "first_time" else max)(e["at"] for e in chosen)
        if kind == "days_since":
            return math.floor((now - at) / DAY)
        return datetime.fromtimestamp(at, UTC).isoformat()
    if over.half_life is not None:
        half = over.half_life.total_seconds()
        weight = [(2 ** (-(now - e["at"]) / half), e) for e in chosen]
        if kind == "count":
            return sum(w for w, _ in weight)
        if kind == "sum":
            return sum(w * v for w, e in weight if (v := _num(e["properties"].get("revenue"))))
    if kind == "count":
        return len(chosen)
    if kind in ("distinct_count", "most_frequent"):
        path = over.property or ""
        keys = [v for e in chosen if isinstance(v := _prop(e["properties"], path), str)]
        if kind == "distinct_count":
            return len(set(keys))
        counts = Counter(keys)
        return min(counts, key=lambda k: (-counts[k], f'"{k}"')) if counts else None
    amounts = [v for e in chosen if (v := _num(e["properties"].get("revenue"))) is not None]
    if kind == "sum":
        return float(sum(amounts))
    if not amounts:
        return None
    return {"average": sum(amounts) / len(amounts), "min": min(amounts),
            "max": max(amounts)}[kind]  # fmt: skip


async def _check(stack: Stack, traits: dict[str, Trait],
                 history: dict[str, list[dict[str, Any]]], now: float) -> None:  # fmt: skip
    """Each user's values, as the profile API shows them, equal the brute-force ones at
    the time they were computed and, for the kinds time changes, at `now` (a decayed
    value within its 5% step)."""
    for user, happened in history.items():
        row = (await stack.call("GET", f"/v1/users/{user}")).json()
        [at] = {datetime.fromisoformat(c["computed_at"]).timestamp()
                for c in row["computed"].values()}  # fmt: skip
        assert {name: c["value"] for name, c in row["computed"].items()} == {
            name: value for name, value in row["traits"].items() if name in traits
        }
        assert at <= now + 1
        expected: dict[str, Any] = {}
        for name, trait in traits.items():
            expected[name] = brute(name, trait, happened, at, expected)
        for name, value in expected.items():
            got = row["traits"].get(name)
            where = f"{user}.{name} at {datetime.fromtimestamp(at, UTC)}"
            if isinstance(value, float):
                assert got is not None, where
                assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {got}"
            else:
                assert got == value, f"{where}: {got!r} != {value!r}"
            trait, over = traits[name], traits[name].over
            if over is not None and over.half_life is not None and value:
                later = brute(name, trait, happened, now, {})
                assert abs(later - value) <= 0.052 * value, f"{where}: stale {value} vs {later}"
            elif trait.kind == "days_since" or trait.sequence or (over and over.window):
                # What time changes is current: the upkeep ran at each boundary.
                later = brute(name, trait, happened, now, {})
                assert later == value or math.isclose(later, value), f"{where}: stale at {now}"
        lapsed = (expected["days_since_last_order"] or 0) >= 20 and expected["orders_count"] > 0
        browsing = expected["categories_viewed_7d"] >= 2
        segments = [s["key"] for s in row["segments"]]
        assert segments == [s for s, on in (("browsing", browsing), ("lapsed", lapsed)) if on]


async def test_each_kind_of_trait_matches_a_brute_force_computation_as_time_passes(
    make_stack: StackFactory, engine: AsyncEngine, time_skipping: WorkflowEnvironment,
) -> None:  # fmt: skip
    start = await time_skipping.get_current_time()
    clock = ManualClock(start)
    # The upkeep wakes when the next value changes, and at least daily (in production,
    # every 15 seconds, for changes events scheduled while it slept; none do here).
    files = {"traits.yaml": TRAITS, "segments.yaml": SEGMENTS}
    daily = "segments: {refresh_every: 1d}\n"
    stack = await make_stack({}, clock=clock, workspace={"files": files, "config": daily})
    traits = load_definitions(stack.workspace).traits
    rng = random.Random(7)
    history = {f"u{i}": _events(rng, start.timestamp(), f"u{i}") for i in range(6)}
    messages = [
        {"type": "track", "userId": user, "event": e["event"], "properties": e["properties"],
         "timestamp": datetime.fromtimestamp(e["at"], UTC).isoformat(),
         "messageId": str(uuid.uuid4())}
        for user, happened in history.items() for e in happened
    ]  # fmt: skip
    rng.shuffle(messages)  # out of order, across several requests
    for i in range(0, len(messages), 25):
        response = await stack.send("/v1/batch", {"batch": messages[i : i + 25]})
        assert response.status_code == 200, response.text
    await _check(stack, traits, history, start.timestamp())
    await start_upkeep(stack.client, stack.services.settings.task_queue, every=timedelta(days=1))

    # Time passes with no event: windows let events go, days pass, views are abandoned.
    for days in (0.5, 1.5, 6, 30):
        await time_skipping.sleep(timedelta(days=days))
        now = await time_skipping.get_current_time()
        await _check(stack, traits, history, now.timestamp())
    profile = (await stack.call("GET", "/v1/users/u0")).json()
    assert profile["traits"]["days_since_last_order"] >= 39  # it moved with no event

    # A new event is folded in on top of what time did.
    clock.now = await time_skipping.get_current_time()
    at = clock.now - timedelta(minutes=5)
    history["u1"].append({"event": "Order Completed", "properties": {"revenue": 12.5},
                          "at": at.timestamp()})  # fmt: skip
    order = {"userId": "u1", "event": "Order Completed", "properties": {"revenue": 12.5}}
    await stack.send("/v1/track", {**order, "timestamp": at.isoformat()})
    await _check(stack, traits, history, clock.now.timestamp())
