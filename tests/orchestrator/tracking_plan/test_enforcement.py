"""The tracking plan on the ingestion path: `enforce` refuses a request and stores
nothing, `report` stores it and counts each violation, readable by the CLI and the API."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import StackFactory
from tests.support.db import count, rows
from tests.support.stack import Stack
from tests.support.workspace import ARBITRATE_ONLY_KEY

PLAN = """
mode: {mode}
unplanned_events: {unplanned}
events:
  Order Completed:
    type: object
    properties:
      order_id: {{type: string}}
      revenue: {{type: number, minimum: 0}}
      currency: {{enum: [EUR, USD]}}
      products:
        type: array
        items:
          type: object
          properties: {{sku: {{type: string}}}}
          required: [sku]
    required: [order_id, revenue]
  Signed Up: {{}}
identify:
  type: object
  properties:
    email: {{type: string, format: email}}
    age: {{type: integer}}
"""


def plan(mode: str, unplanned: str = "allow") -> dict[str, str]:
    return {"tracking_plan.yaml": PLAN.format(mode=mode, unplanned=unplanned)}


def order(user: str, message_id: str | None = None, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": message_id or str(uuid.uuid4()),
        "properties": {"order_id": "o-1", "revenue": 10, **properties},
    }


async def test_enforce_refuses_the_request_naming_event_and_field(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({}, workspace={"files": plan("enforce", unplanned="refuse")})
    good = order("u1")
    bad = order("u1", revenue="ten")
    response = await stack.send("/v1/batch", {"batch": [good, bad]})
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "field": "batch[1].properties.revenue",
        "error": "tracking plan: event 'Order Completed': properties.revenue: expected "
        "number, got string",
    }
    # Nested, missing, and each kind of call the plan covers.
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/batch", {"batch": [good, order("u1", products=[{"sku": "a"}, {}])]},
         "batch[1].properties.products[1].sku"),
        ("/v1/track", {k: v for k, v in order("u1").items() if k != "properties"},
         "properties.order_id"),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "not an address", "age": 3}},
         "traits.email"),
        ("/v1/identify", {"userId": "u1", "traits": {"age": 3.5}}, "traits.age"),
        ("/v1/batch", {"batch": [good, {"type": "track", "userId": "u1", "event": "Oops"}]},
         "batch[1].event"),
    ]  # fmt: skip
    for path, body, field in cases:
        refused = await stack.send(path, body)
        assert (refused.status_code, refused.json()["field"]) == (400, field), refused.json()
    assert "'Oops' is not in the tracking plan" in refused.json()["error"]
    assert await count(engine, "events") == 0
    assert await count(engine, "profiles") == 0
    assert await count(engine, "tracking_plan_violations") == 0
    # What the plan allows is stored; messages the plan does not cover pass.
    fine = [
        good,
        {"type": "page", "userId": "u1", "name": "Home"},
        {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}},
        {"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"x": 1}},
    ]
    assert (await stack.send("/v1/batch", {"batch": fine})).status_code == 200
    assert await count(engine, "events") == 4


async def _violations(stack: Stack, query: str = "") -> dict[str, Any]:
    response = await stack.call("GET", f"/v1/tracking-plan/violations{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_report_stores_and_counts_each_violation(
    make_stack: StackFactory,
    engine: AsyncEngine,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = await make_stack({}, workspace={"files": plan("report", unplanned="report")})
    first = [
        order("u1", "m-1", revenue="ten"),
        order("u2", "m-2", revenue=-5, currency="GBP"),
        order("u3", "m-3", revenue="x", products=[{"sku": "a"}, {}, {}]),
        {"type": "track", "userId": "u1", "event": "Oops", "messageId": "m-4"},
        {"type": "identify", "userId": "u1", "traits": {"age": "old"}, "messageId": "m-5"},
    ]
    assert (await stack.send("/v1/batch", {"batch": first})).status_code == 200
    # A retried request stores nothing new and counts nothing twice.
    assert (await stack.send("/v1/batch", {"batch": first})).status_code == 200
    assert (await stack.send("/v1/track", order("u4", "m-6", revenue="1"))).status_code == 200
    assert await count(engine, "events") == 6
    body = await _violations(stack)
    assert body["plan_version"] == 1
    found = {(v["event"], v["field"], v["problem"]): v["count"] for v in body["violations"]}
    assert found == {
        ("Order Completed", "properties.revenue", "type: number"): 3,
        ("Order Completed", "properties.revenue", "minimum: 0"): 1,
        ("Order Completed", "properties.currency", "enum"): 1,
        # One message with two bad items counts once.
        ("Order Completed", "properties.products[].sku", "required"): 1,
        ("Oops", "event", "unplanned"): 1,
        ("", "traits.age", "type: integer"): 1,
    }
    top = body["violations"][0]
    assert (top["field"], top["example_message_id"]) == ("properties.revenue", "m-6")
    assert top["example_detail"] == "properties.revenue: expected number, got string"
    assert "ten" not in str(body)  # counts and field names, never values sent
    # Counted per day: a window of a day includes today.
    assert len((await _violations(stack, "?since=1d"))["violations"]) == 6
    bad = await stack.call("GET", "/v1/tracking-plan/violations?since=yesterday")
    assert (bad.status_code, bad.json()["field"]) == (400, "since")
    denied = await stack.call("GET", "/v1/tracking-plan/violations", key=ARBITRATE_ONLY_KEY)
    assert denied.status_code == 403
    shown = await stack.call("GET", "/v1/tracking-plan")
    assert (shown.json()["version"], shown.json()["mode"]) == (1, "report")
    assert "Order Completed" in shown.json()["events"]

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, app, ["tracking-plan", "violations",
                                                          "--since", "7d"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan v1 since ")
    assert lines[2].split()[:5] == ["3", "Order", "Completed", "properties.revenue", "type:"]
    assert any(line.split()[:3] == ["1", "(identify)", "traits.age"] for line in lines)
    # --json says what the API says, in the same types
    as_json = await asyncio.to_thread(runner.invoke, app, ["tracking-plan", "violations",
                                                           "--since", "7d", "--json"])  # fmt: skip

    def counted(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(v["event"], v["field"], v["problem"], v["count"],
                 datetime.fromisoformat(v["first_seen"])) for v in found]  # fmt: skip

    assert counted(json.loads(as_json.stdout)["violations"]) == counted(body["violations"])
    wrong = await asyncio.to_thread(runner.invoke, app, ["tracking-plan", "violations",
                                                         "--since", "soon"])  # fmt: skip
    assert wrong.exit_code == 2


async def test_a_new_plan_takes_effect_on_running_processes(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({}, workspace={"files": plan("report")})
    assert (await stack.send("/v1/track", order("u1", revenue="x"))).status_code == 200
    # Deployed while the API runs: its registry sees the new version within its ttl.
    (stack.workspace / "tracking_plan.yaml").write_text(PLAN.format(mode="enforce",
                                                                    unplanned="allow"))  # fmt: skip
    await stack.redeploy()
    assert await rows(engine, "SELECT version, plan->>'mode' AS mode FROM tracking_plans "
                      "ORDER BY version") == [{"version": 1, "mode": "report"},
                                              {"version": 2, "mode": "enforce"}]  # fmt: skip
    await stack.services.registry.reload()  # what the API does within a second
    assert (await stack.send("/v1/track", order("u1", revenue="x"))).status_code == 400
    assert (await _violations(stack))["plan_version"] == 2
    assert (await _violations(stack, "?version=1"))["violations"][0]["count"] == 1
    # Removing the file removes the plan: nothing is checked any more.
    (stack.workspace / "tracking_plan.yaml").unlink()
    await stack.redeploy()
    await stack.services.registry.reload()
    assert (await stack.send("/v1/track", order("u1", revenue="x"))).status_code == 200
    assert (await stack.call("GET", "/v1/tracking-plan")).status_code == 404
    assert await count(engine, "tracking_plans") == 3
