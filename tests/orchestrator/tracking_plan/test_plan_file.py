"""A bad tracking_plan.yaml is reported at its positions, like journeys, and nothing is
deployed; a good one deploys once per change."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.deploy import TRACKING_PLAN, deploy_workspace
from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_workspace
from tests.support.db import count, rows
from tests.support.workspace import write_workspace

BAD_PLAN = """\
mode: enforced
unplanned: refuse
events:
  Order Completed:
    type: object
    properties:
      revenue: {type: numbr}
      sku: {type: string, pattern: "["}
      total: {$ref: "https://example.com/money.json"}
    required: revenue
  Product Viewed: [sku]
identify:
  properties:
    age: {type: integer, minimum: old}
"""
GOOD_PLAN = """\
mode: enforce
events:
  Order Completed:
    type: object
    properties:
      revenue: {type: number}
      total: {$ref: "#/$defs/money"}
    required: [revenue]
    $defs:
      money: {type: number, minimum: 0}
"""


def test_every_problem_of_a_bad_plan_is_reported_at_its_position(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={},
                           files={"tracking_plan.yaml": BAD_PLAN})  # fmt: skip
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    found = [(p.file, p.line, p.col, p.path, p.message) for p in caught.value.problems]
    types = "string, number, integer, boolean, object, array, null"
    plan = "tracking_plan.yaml"
    assert found == [
        (plan, 1, 7, "mode", "Input should be 'enforce' or 'report'"),
        (plan, 2, 1, "unplanned", "unknown key"),
        (plan, 7, 23, "events.Order Completed.properties.revenue.type",
         f"unknown type: use {types} (or a list of them)"),
        (plan, 9, 21, "events.Order Completed.properties.total.$ref",
         "'https://example.com/money.json': only references inside the schema "
         "(#/$defs/...) are allowed"),
        (plan, 10, 15, "events.Order Completed.required",
         'not valid JSON Schema: "revenue" is not of type "array"'),
        (plan, 11, 3, "events.Product Viewed",
         "must be a JSON Schema: a mapping such as `{type: object, properties: ...}`"),
        (plan, 14, 35, "identify.properties.age.minimum",
         'not valid JSON Schema: "old" is not of type "number"'),
    ]  # fmt: skip
    # A pattern that is no regular expression is found when the schema compiles.
    fixed = GOOD_PLAN.replace("revenue: {type: number}", 'revenue: {type: number}\n'
                              '      sku: {type: string, pattern: "["}')  # fmt: skip
    (root / "tracking_plan.yaml").write_text(fixed)
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    [problem] = caught.value.problems
    assert (problem.line, problem.col, problem.path) == (
        7, 36, "events.Order Completed.properties.sku.pattern")  # fmt: skip
    # `journeys validate` prints them as it prints a journey's, and fails.
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 1
    assert "tracking_plan.yaml:7:36: events.Order Completed.properties.sku.pattern: " in (
        result.stdout)  # fmt: skip


async def test_a_bad_plan_deploys_nothing_and_a_good_one_once_per_change(
    tmp_path: Path, engine: AsyncEngine
) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={},
                           files={"tracking_plan.yaml": BAD_PLAN})  # fmt: skip
    result = CliRunner().invoke(app, ["journeys", "deploy", "--workspace", str(root)])
    assert result.exit_code == 1  # (no database needed: it stops at validation)
    assert await count(engine, "tracking_plans") == 0
    (root / "tracking_plan.yaml").write_text(GOOD_PLAN)
    [done] = await deploy_workspace(engine, load_workspace(root))
    assert (done.key, done.version, done.change) == (TRACKING_PLAN, 1, "new")
    [again] = await deploy_workspace(engine, load_workspace(root))
    assert (again.version, again.change) == (1, "unchanged")
    # A comment changes nothing the plan checks: no new version.
    (root / "tracking_plan.yaml").write_text("# orders\n" + GOOD_PLAN)
    [same] = await deploy_workspace(engine, load_workspace(root))
    assert same.change == "unchanged"
    (root / "tracking_plan.yaml").write_text(GOOD_PLAN.replace("mode: enforce", "mode: report"))
    [changed] = await deploy_workspace(engine, load_workspace(root))
    assert (changed.version, changed.change) == (2, "updated")
    stored = await rows(engine, "SELECT version, plan->>'mode' AS mode, source FROM "
                        "tracking_plans ORDER BY version")  # fmt: skip
    assert [(r["version"], r["mode"]) for r in stored] == [(1, "enforce"), (2, "report")]
    assert stored[1]["source"].startswith("mode: report")
    audit = await rows(engine, "SELECT details FROM audit_log WHERE action = 'journeys.deploy'")
    assert [a["details"] for a in audit] == [
        {"tracking_plan": TRACKING_PLAN, "version": 1, "change": "new"},
        {"tracking_plan": TRACKING_PLAN, "version": 2, "change": "updated"},
    ]
