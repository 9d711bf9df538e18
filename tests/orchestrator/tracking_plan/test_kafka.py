"""The tracking plan on Kafka: under enforce a record that breaks it goes to the
dead-letter topic with its reason and field (as a malformed one does) while the
records around it are applied; under report it is stored and counted."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.orchestrator.test_kafka_consumer import (
    _applied,
    _kafka_workspace,
    _read_all,
    consuming,
    message,
    produce,
)
from tests.orchestrator.tracking_plan.test_enforcement import PLAN
from tests.support.db import rows
from tests.support.stack import eventually


def _workspace(bootstrap: str, topic: str, mode: str) -> dict[str, object]:
    return {**_kafka_workspace(bootstrap, topic),
            "files": {"tracking_plan.yaml": PLAN.format(mode=mode, unplanned="allow")}}  # fmt: skip


def _order(revenue: object) -> bytes:
    return message(type="track", userId="u1", event="Order Completed",
                   properties={"order_id": "o-1", "revenue": revenue})  # fmt: skip


async def test_enforce_sets_violating_records_aside(
    make_stack: StackFactory, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    stack = await make_stack({}, workspace=_workspace(kafka_broker, topic, "enforce"))
    async with consuming(stack) as consumer:
        await produce(kafka_broker, topic, [
            ("u1", _order(12.5)),
            ("u1", _order("lots")),
            ("u1", message(type="identify", userId="u1", traits={"age": "old"})),
            ("u1", _order(3)),
        ])  # fmt: skip
        await eventually(lambda: _applied(consumer, 2))
    stored = await rows(engine, "SELECT properties->>'revenue' AS revenue FROM events")
    assert sorted(r["revenue"] for r in stored) == ["12.5", "3"]
    dead = await _read_all(kafka_broker, f"{topic}-dead", 2)
    assert [(h["field"], h["reason"], h["offset"]) for h in dead] == [
        ("properties.revenue", "tracking plan: event 'Order Completed': properties.revenue: "
         "expected number, got string", "1"),
        ("traits.age", "tracking plan: identify traits: traits.age: expected integer, got "
         "string", "2"),
    ]  # fmt: skip


async def test_report_stores_violating_records_and_counts_them(
    make_stack: StackFactory, engine: AsyncEngine, kafka_broker: str
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    stack = await make_stack({}, workspace=_workspace(kafka_broker, topic, "report"))
    async with consuming(stack) as consumer:
        await produce(kafka_broker, topic, [("u1", _order("lots")), ("u1", _order(-1)),
                                            ("u1", _order("more"))])  # fmt: skip
        await eventually(lambda: _applied(consumer, 3))
    assert len(await rows(engine, "SELECT 1 FROM events")) == 3
    counted = await rows(engine, "SELECT field, problem, count FROM tracking_plan_violations "
                         "ORDER BY problem")  # fmt: skip
    assert counted == [
        {"field": "properties.revenue", "problem": "minimum: 0", "count": 1},
        {"field": "properties.revenue", "problem": "type: number", "count": 2},
    ]
