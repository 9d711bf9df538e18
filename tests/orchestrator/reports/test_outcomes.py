"""What a report counts as each user's outcome: measured the same way in every arm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.reports import service
from tests.conftest import StackFactory
from tests.orchestrator.reports.test_alerts import SPLIT

OTHER = """
journey: other
name: Other
trigger: {event: Signed Up}
goal: {event: Order Completed, within: 7d}
start: done
steps:
  done:
    exit: {}
"""
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


async def enroll(conn: Any, journey: str, user: str, *, value: float | None = None,
                 event: int | None = None, n: int = 0) -> int:  # fmt: skip
    """An enrollment, converted (by `event`, worth `value`) when `event` is given."""
    converted = NOW + timedelta(hours=1) if event is not None else None
    return int(
        await conn.scalar(
            text(
                "INSERT INTO enrollments (journey_key, version, user_id, status,"
                " trigger_message_id, entered_at, converted_at, conversion_value,"
                " conversion_event_id) VALUES (:j, 1, :u, 'completed', :t, :at, :c, :v, :ev)"
                " RETURNING id"
            ),
            {"j": journey, "u": user, "t": f"{user}-{journey}-{n}", "c": converted,
             "at": NOW + timedelta(minutes=n), "v": value, "ev": event},
        )
    )  # fmt: skip


async def assign(conn: Any, journey: str, kind: str, key: str, user: str, arm: str,
                 enrollment: int) -> None:  # fmt: skip
    await conn.execute(
        text(
            "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id, arm,"
            " enrollment_id, propensity, assigned_at) VALUES (:j, :k, :key, 'fixed', :u, :a,"
            " :e, 0.5, :at)"
        ),
        {"j": journey, "k": kind, "key": key, "u": user, "a": arm, "e": enrollment, "at": NOW},
    )


async def test_a_held_out_user_entering_again_gets_no_second_chance_to_convert(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    """Under `re_entry`, a held-out user re-enters on every trigger while a treated one
    waits in the journey: counting any later enrollment would favour the control."""
    await make_stack({"offer": SPLIT})
    async with engine.begin() as conn:
        first = await enroll(conn, "offer", "held")
        await enroll(conn, "offer", "held", value=30, event=1, n=1)  # a later entry converts
        await assign(conn, "offer", "holdout", "holdout", "held", "control", first)
        treated = await enroll(conn, "offer", "treated", value=20, event=2)
        await assign(conn, "offer", "holdout", "holdout", "treated", "treatment", treated)
    async with engine.connect() as conn:
        result = await service.experiment(conn, journey="offer", key="holdout", kind="holdout",
                                          now=NOW + timedelta(days=1))  # fmt: skip
    assert result.analysis is not None
    arms = {a.arm: a for a in result.analysis.arms}
    assert (arms["control"].users, arms["control"].conversions) == (1, 0)
    assert (arms["treatment"].users, arms["treatment"].conversions) == (1, 1)
    assert arms["treatment"].revenue_per_user.value == 20


async def test_the_global_control_counts_each_purchase_once_across_journeys(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    """One `Order Completed` converts every journey waiting for it; its revenue is still
    one purchase's."""
    await make_stack({"offer": SPLIT, "other": OTHER})
    async with engine.begin() as conn:
        first = await enroll(conn, "offer", "buyer", value=50, event=7)
        await enroll(conn, "other", "buyer", value=50, event=7, n=1)  # the same purchase
        await enroll(conn, "other", "buyer", value=10, event=8, n=2)  # another one
        await assign(conn, "*", "global_control", "global_control", "buyer", "treatment", first)
        idle = await enroll(conn, "offer", "idle")
        await assign(conn, "*", "global_control", "global_control", "idle", "control", idle)
    async with engine.connect() as conn:
        result = await service.experiment(conn, journey="*", key="global_control",
                                          kind="global_control", global_control=50,
                                          now=NOW + timedelta(days=1))  # fmt: skip
    assert result.analysis is not None
    arms = {a.arm: a for a in result.analysis.arms}
    assert (arms["treatment"].users, arms["treatment"].conversions) == (1, 1)
    assert arms["treatment"].revenue_per_user.value == 60
    assert (arms["control"].users, arms["control"].conversions) == (1, 0)


async def test_users_of_an_earlier_split_are_left_out_and_counted(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    """The split changed from 50/50 to 90/10: pooling both would compare unlike groups
    and the sample-ratio check would cry wolf."""
    await make_stack({"offer": SPLIT.replace("weight: 1, next", "weight: 9, next", 1)})
    async with engine.begin() as conn:
        for n in range(40):  # under 50/50 (logged chance 0.5 each)
            arm = "control" if n % 2 else "discount"
            e = await enroll(conn, "offer", f"early-{n}", n=n)
            await assign(conn, "offer", "experiment", "discount_test", f"early-{n}", arm, e)
        for n in range(100):  # under 90/10
            arm = "control" if n % 10 else "discount"
            e = await enroll(conn, "offer", f"late-{n}", n=n)
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id,"
                    " arm, enrollment_id, propensity, assigned_at) VALUES ('offer',"
                    " 'experiment', 'discount_test', 'fixed', :u, :a, :e, :p, :at)"
                ),
                {"u": f"late-{n}", "a": arm, "e": e, "p": 0.9 if arm == "control" else 0.1,
                 "at": NOW},
            )  # fmt: skip
    async with engine.connect() as conn:
        result = await service.experiment(conn, journey="offer", key="discount_test",
                                          now=NOW + timedelta(days=1))  # fmt: skip
    assert (result.users, result.users_earlier_split) == (100, 40)
    assert result.analysis is not None
    assert result.analysis.sample_ratio is not None
    assert result.analysis.sample_ratio.observed == (90, 10)
    assert not result.analysis.sample_ratio.mismatch
