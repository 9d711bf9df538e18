"""Alerts: raised once as an event (a journey can react) and a signed webhook, shown in
the reports, resolved when the condition clears."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.reports import alerts
from tests.conftest import StackFactory
from tests.support.clock import ManualClock
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.workspace import SECRETS

SPLIT = """
journey: offer
name: Offer
trigger: {event: Browsed}
goal: {event: Order Completed, within: 7d}
start: split
steps:
  split:
    experiment:
      key: discount_test
      variants:
        - {name: control, weight: 1, next: done}
        - {name: discount, weight: 1, next: done}
  done:
    exit: {}
"""
PAGER = """
journey: pager
name: Page the on-call marketer
category: service
trigger: {event: Alert Raised}
re_entry: always
start: note
steps:
  note:
    send: {channel: in_app, template: hello}
    next: done
  done:
    exit: {}
"""


async def skew(engine: AsyncEngine, control: int, discount: int, *, prefix: str = "a") -> None:
    """Users assigned in a lopsided way, as a broken split would leave them."""
    async with engine.begin() as conn:
        for n in range(control + discount):
            user = f"skewed-{prefix}-{n}"
            enrollment = await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at) VALUES ('offer', 1, :u, 'completed', :u,"
                    " now()) RETURNING id"
                ),
                {"u": user},
            )
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, version, kind, experiment_key, mode,"
                    " user_id, enrollment_id, arm, propensity) VALUES ('offer', 1,"
                    " 'experiment', 'discount_test', 'fixed', :u, :e, :a, 0.5)"
                ),
                {"u": user, "e": enrollment, "a": "control" if n < control else "discount"},
            )


async def test_a_sample_ratio_mismatch_is_raised_once_and_resolved(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    clock = ManualClock()
    config = f"alerts:\n  url: {receiver.url}/hooks/alerts\n  signing_secret: {SECRETS['hooks']}\n"
    stack = await make_stack(
        {"offer": SPLIT, "pager": PAGER}, workspace={"config": config}, clock=clock
    )
    await skew(engine, control=300, discount=200)
    raised = await alerts.check(stack.services, now=clock())
    assert [(f.kind, f.subject) for f in raised] == [("sample_ratio", "offer/discount_test")]
    # a signed webhook, and an event a journey reacts to
    [posted] = await receiver.wait_for(lambda rs: len(rs) >= 1)
    assert posted.verified
    assert posted.json["data"]["subject"] == "offer/discount_test"
    await stack.result("pager", "alerts")
    assert len(receiver.at("/in_app")) == 1
    # shown in the journey's report, and not raised again while it holds
    report = (await stack.call("GET", "/v1/reports/journeys/offer")).json()
    assert [a["kind"] for a in report["alerts"]] == ["sample_ratio"]
    clock.advance(timedelta(minutes=15))
    assert await alerts.check(stack.services, now=clock()) == []
    assert len(await rows(engine, "SELECT 1 FROM alerts")) == 1
    # the split is put right: the alert is resolved, and that is an event too
    await skew(engine, control=0, discount=100, prefix="b")
    clock.advance(timedelta(minutes=15))
    assert await alerts.check(stack.services, now=clock()) == []
    [alert] = await rows(engine, "SELECT resolved_at FROM alerts")
    assert alert["resolved_at"] == clock()
    events = await rows(engine, "SELECT event FROM events WHERE user_id = 'alerts' ORDER BY id")
    assert [e["event"] for e in events] == ["Alert Raised", "Alert Resolved"]
    report = (await stack.call("GET", "/v1/reports/workspace")).json()
    assert report["alerts"] == []


async def test_delivery_failures_and_ranking_fallbacks_are_alerts(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    clock = ManualClock()
    stack = await make_stack({"offer": SPLIT}, clock=clock)
    async with engine.begin() as conn:
        for n in range(60):
            await conn.execute(
                text(
                    "INSERT INTO messages (id, journey_key, version, user_id, step, channel,"
                    " template, status, content_source, created_at) VALUES (:id, 'offer', 1,"
                    " :u, 's', :c, 't', :s, CAST(:src AS jsonb), :at)"
                ),
                {"id": f"m-{n}", "u": f"u-{n}", "c": "push" if n % 2 else "email",
                 "s": "failed" if n % 2 else "sent", "at": clock() - timedelta(minutes=5),
                 "src": '{"source": "baseline"}' if n % 3 else '{"source": "model"}'},
            )  # fmt: skip
    raised = await alerts.check(stack.services, now=clock())
    assert sorted((f.kind, f.subject) for f in raised) == [
        ("delivery_failures", "push"),
        ("ranking_fallback", "ranking"),
    ]


async def test_a_collapse_in_conversions_is_an_alert(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    clock = ManualClock()
    stack = await make_stack({"offer": SPLIT}, clock=clock)
    now = clock()
    async with engine.begin() as conn:
        for n in range(200):  # the fortnight before: half converted
            entered = now - timedelta(days=2 + n % 12)
            await conn.execute(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at, converted_at) VALUES ('offer', 1, :u,"
                    " 'completed', :u, :e, :c)"
                ),
                {"u": f"old-{n}", "e": entered,
                 "c": entered + timedelta(hours=2) if n % 2 else None},
            )  # fmt: skip
        for n in range(60):  # the last day: hardly anyone
            await conn.execute(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at, converted_at) VALUES ('offer', 1, :u,"
                    " 'active', :u, :e, :c)"
                ),
                {"u": f"new-{n}", "e": now - timedelta(hours=3),
                 "c": now - timedelta(hours=1) if n < 2 else None},
            )  # fmt: skip
    raised = await alerts.check(stack.services, now=now)
    assert [(f.kind, f.subject) for f in raised] == [("conversion_drop", "offer")]
    assert "fell to 3.3%" in raised[0].summary


async def test_conversions_outnumbering_the_days_entries_stop_no_check(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    """Yesterday's conversions come from entries of the days before: more of them than
    of the day's entries must not break the conversion check, nor the checks after it."""
    clock = ManualClock()
    stack = await make_stack({"offer": SPLIT}, clock=clock)
    now = clock()
    async with engine.begin() as conn:
        for n in range(100):  # entered in the fortnight, many converting in the last day
            entered = now - timedelta(days=2 + n % 10)
            converted = now - timedelta(hours=2) if n < 30 else None
            await conn.execute(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at, converted_at) VALUES ('offer', 1, :u,"
                    " 'completed', :u, :e, :c)"
                ),
                {"u": f"old-{n}", "e": entered, "c": converted},
            )
        for n in range(20):  # the day's entries, and failing messages
            await conn.execute(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at) VALUES ('offer', 1, :u, 'active', :u, :e)"
                ),
                {"u": f"new-{n}", "e": now - timedelta(hours=3)},
            )
            await conn.execute(
                text(
                    "INSERT INTO messages (id, journey_key, version, user_id, step, channel,"
                    " template, status, created_at) VALUES (:id, 'offer', 1, :u, 's', 'email',"
                    " 't', 'failed', :at)"
                ),
                {"id": f"m-{n}", "u": f"new-{n}", "at": now - timedelta(minutes=5)},
            )
    raised = await alerts.check(stack.services, now=now)
    assert [(f.kind, f.subject) for f in raised] == [("delivery_failures", "email")]
