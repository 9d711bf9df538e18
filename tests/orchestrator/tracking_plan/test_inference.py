"""`orchestrator tracking-plan infer` proposes a plan from stored events that validates
and that the same traffic keeps to."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sources import load
from orchestrator.tracking_plan.plan import plan_from
from tests.conftest import StackFactory
from tests.support.db import count


def _traffic() -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    for n in range(30):
        properties: dict[str, Any] = {"order_id": f"o-{n}", "revenue": n + 0.5 * (n % 2),
                                      "items": n % 4, "currency": ["EUR", "USD"][n % 2],
                                      "products": [{"sku": "a"}]}  # fmt: skip
        if n % 3:
            properties["coupon"] = None if n % 5 == 0 else f"C{n}"
        batch.append({"type": "track", "userId": f"u{n}", "event": "Order Completed",
                      "messageId": str(uuid.uuid4()), "properties": properties})  # fmt: skip
        batch.append({"type": "identify", "userId": f"u{n}", "messageId": str(uuid.uuid4()),
                      "traits": {"email": f"u{n}@example.com", "vip": n % 2 == 0}})  # fmt: skip
    batch.append({"type": "track", "userId": "u1", "event": "Signed Up"})
    batch.append({"type": "page", "userId": "u1", "name": "Home"})
    return batch


async def test_infer_proposes_a_plan_the_stored_events_keep_to(
    make_stack: StackFactory,
    engine: AsyncEngine,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    stack = await make_stack({})
    traffic = _traffic()
    assert (await stack.send("/v1/batch", {"batch": traffic})).status_code == 200
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    output = tmp_path / "proposed.yaml"
    result = await asyncio.to_thread(CliRunner().invoke, app, [
        "tracking-plan", "infer", "--since", "1d", "--output", str(output)])  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = YAML(typ="safe").load(output.read_text())
    assert output.read_text().startswith("# Proposed by `orchestrator tracking-plan infer`")
    assert (plan["mode"], plan["unplanned_events"]) == ("report", "report")
    assert plan["events"] == {
        "Order Completed": {
            "type": "object",
            "properties": {
                "coupon": {"type": ["null", "string"]},
                "currency": {"type": "string", "enum": ["EUR", "USD"]},
                "items": {"type": "integer"},
                "order_id": {"type": "string"},
                "products": {"type": "array"},
                "revenue": {"type": "number"},
            },
            "required": ["currency", "items", "order_id", "products", "revenue"],
        },
        "Signed Up": {"type": "object"},
    }
    assert plan["identify"] == {
        "type": "object",
        "properties": {"email": {"type": "string"}, "vip": {"type": "boolean"}},
        "required": ["email", "vip"],
    }
    # It validates as it is, and the traffic it came from keeps to it.
    (stack.workspace / "tracking_plan.yaml").write_text(output.read_text())
    plan_from(load(stack.workspace / "tracking_plan.yaml"))
    await stack.redeploy()
    await stack.services.registry.reload()
    again = [{**m, "messageId": str(uuid.uuid4())} for m in traffic]
    assert (await stack.send("/v1/batch", {"batch": again})).status_code == 200
    assert await count(engine, "tracking_plan_violations") == 0
    wrong = await asyncio.to_thread(CliRunner().invoke, app, [
        "tracking-plan", "infer", "--since", "a month"])  # fmt: skip
    assert wrong.exit_code == 2
