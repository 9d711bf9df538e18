"""Assignments as data: holdouts, the global control group and bandit draws are logged
once per user with their propensity; goal conversions carry their revenue."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.experiments.assignments import GlobalControl, thompson_propensities
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from workflows.assignment import in_holdout

ALWAYS = """
journey: promo
name: Promo
category: promotional
trigger: {event: Browsed}
re_entry: always
holdout: 50
goal: {event: Order Completed, within: 7d}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""
SERVICE = (
    ALWAYS.replace("journey: promo", "journey: receipt")
    .replace("category: promotional", "category: service")
    .replace("holdout: 50\n", "")
    .replace("Browsed", "Bought")
)


async def test_a_held_out_user_is_one_assignment_however_often_they_enter(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"promo": ALWAYS})
    users = [f"user-{i}" for i in range(12)]
    held = {u for u in users if in_holdout("promo", u, 50)}
    assert 0 < len(held) < len(users)
    for _ in range(3):
        for user in users:
            await stack.track(user, "Browsed")
        for user in set(users) - held:
            await stack.result("promo", user)
    entries = await rows(engine, "SELECT user_id FROM enrollments WHERE journey_key = 'promo'")
    assert len(entries) == 3 * len(users)  # every trigger is an enrollment...
    logged = await rows(
        engine,
        "SELECT user_id, arm, propensity, kind, mode FROM assignments WHERE kind = 'holdout'",
    )
    assert len(logged) == len(users)  # ...but each user is assigned once
    assert {r["user_id"] for r in logged if r["arm"] == "control"} == held
    assert {(r["propensity"], r["mode"]) for r in logged} == {(0.5, "fixed")}


async def test_the_global_control_group_gets_no_promotion_but_its_service_messages(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack(
        {"promo": ALWAYS.replace("holdout: 50\n", ""), "receipt": SERVICE},
        workspace={"config": "global_control: 50\n"},
    )
    control = GlobalControl("test", 50)
    users = [f"user-{i}" for i in range(12)]
    kept_out = {u for u in users if control.holds(u)}
    assert 0 < len(kept_out) < len(users)
    for user in users:
        await stack.track(user, "Browsed")
        await stack.track(user, "Bought")
    for user in users:
        await stack.result("promo", user)
        await stack.result("receipt", user)
    sent = await rows(engine, "SELECT user_id, journey_key FROM messages WHERE status <> 'failed'")
    promoted = {r["user_id"] for r in sent if r["journey_key"] == "promo"}
    assert promoted == set(users) - kept_out
    assert {r["user_id"] for r in sent if r["journey_key"] == "receipt"} == set(users)
    reasons = await rows(
        engine, "SELECT user_id, reason FROM arbitration_decisions WHERE action = 'suppress'"
    )
    assert {r["user_id"] for r in reasons} == kept_out
    assert all("global control" in r["reason"] for r in reasons)
    logged = await rows(
        engine,
        "SELECT user_id, arm, propensity, journey_key FROM assignments "
        "WHERE kind = 'global_control'",
    )
    assert len(logged) == len(users)  # once per user, whichever journey came first
    assert {r["user_id"] for r in logged if r["arm"] == "control"} == kept_out
    assert {(r["propensity"], r["journey_key"]) for r in logged} == {(0.5, "*")}


async def test_a_goal_event_s_revenue_is_kept_with_the_conversion(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"promo": ALWAYS})
    users = ["ada", "grace", "linus", "mary"]
    for user in users:
        await stack.track(user, "Browsed")
    await stack.track("ada", "Order Completed", {"revenue": 80.5})
    await stack.track("grace", "Order Completed", {"value": 12})
    await stack.track("linus", "Order Completed", {"revenue": "lots"})
    converted = await rows(
        engine,
        "SELECT user_id, conversion_value FROM enrollments WHERE converted_at IS NOT NULL "
        "ORDER BY user_id",
    )
    assert converted == [
        {"user_id": "ada", "conversion_value": 80.5},
        {"user_id": "grace", "conversion_value": 12.0},
        {"user_id": "linus", "conversion_value": None},
    ]


@pytest.mark.parametrize(
    ("stats", "min_share", "expected"),
    [
        ([(0, 0), (0, 0)], 0.1, [0.5, 0.5]),  # no data: an even chance
        ([(0, 0), (0, 0), (0, 0), (0, 0)], 0.0, [0.25] * 4),
        ([(1000, 900), (1000, 100)], 0.1, [0.9, 0.1]),  # the floor is all the loser gets
        ([(1000, 900), (1000, 100)], 0.0, [1.0, 0.0]),
        ([(1000, 100), (1000, 900), (1000, 500)], 0.05, [0.05, 0.9, 0.05]),
        ([(5, 1), (5, 1)], 0.5, [0.5, 0.5]),  # all exploration
    ],
)
def test_thompson_propensities(
    stats: list[tuple[int, int]], min_share: float, expected: list[float]
) -> None:
    chances = thompson_propensities(stats, min_share=min_share, seed=7)
    assert chances == pytest.approx(expected, abs=0.02)
    assert sum(chances) == pytest.approx(1.0)
    assert min(chances) > 0  # a drawn arm always has a weight


def test_thompson_propensities_match_the_sampler() -> None:
    """The logged chances are those of `workflows.assignment.thompson` itself."""
    import random
    from collections import Counter

    from workflows.assignment import thompson

    stats = [(40, 4), (40, 6), (40, 5)]
    chances = thompson_propensities(stats, min_share=0.1, seed=1)
    rng = random.Random(3)
    drawn = Counter(thompson(stats, min_share=0.1, rng=rng) for _ in range(20_000))
    for arm, chance in enumerate(chances):
        assert drawn[arm] / 20_000 == pytest.approx(chance, abs=0.02)
