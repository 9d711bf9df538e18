"""The workspace report: all journeys together against the global control group; and an
ended experiment's results, archived unchanged."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from orchestrator.access.audit import Actor
from orchestrator.cli import app as cli
from orchestrator.experiments.assignments import GlobalControl
from orchestrator.reports import design, service
from tests.conftest import StackFactory
from tests.orchestrator.reports.test_journey_reports import OFFER
from tests.support.db import rows

PROMO = """
journey: promo
name: Promo
category: promotional
trigger: {event: Browsed}
goal: {event: Order Completed, within: 7d}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""
USERS = [f"user-{i:02}" for i in range(40)]


async def test_the_global_control_group_measures_all_journeys_together(
    make_stack: StackFactory, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack({"promo": PROMO}, workspace={"config": "global_control: 25\n"})
    control = GlobalControl("test", 25)
    held = [u for u in USERS if control.holds(u)]
    assert 0 < len(held) < len(USERS)
    for user in USERS:
        await stack.track(user, "Browsed")
    for user in USERS:
        await stack.result("promo", user)
    # those who got the promotion buy (30 each); a third of the control group does anyway
    for n, user in enumerate(USERS):
        if user not in held or n % 3 == 0:
            await stack.track(user, "Order Completed", {"revenue": 30})
    report = (await stack.call("GET", "/v1/reports/workspace")).json()
    result = report["global_control"]
    assert result["shares"] == {"control": 0.25, "treatment": 0.75}
    arms = {a["arm"]: a for a in result["analysis"]["arms"]}
    held_buyers = sum(1 for n, u in enumerate(USERS) if u in held and n % 3 == 0)
    assert (arms["control"]["users"], arms["control"]["conversions"]) == (len(held), held_buyers)
    treated = len(USERS) - len(held)
    assert (arms["treatment"]["users"], arms["treatment"]["conversions"]) == (treated, treated)
    # what the journeys added: the treated group's lift in conversions, counted in users
    incremental = report["incremental_conversions"]
    assert incremental["value"] == pytest.approx(treated * (1 - held_buyers / len(held)))
    assert incremental["low"] < incremental["value"] < incremental["high"]
    assert report["incremental_revenue"]["value"] == pytest.approx(30 * incremental["value"])
    assert [j["key"] for j in report["journeys"]] == ["promo"]

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(stack.workspace))
    shown = await asyncio.to_thread(CliRunner().invoke, cli, ["report", "workspace"])
    assert shown.exit_code == 0, shown.output
    assert f"{held_buyers}/{len(held)} converted" in shown.stdout
    assert "incremental conversions" in shown.stdout


async def test_an_ended_experiment_keeps_its_results_unchanged(
    make_stack: StackFactory, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack({"offer": OFFER})
    for user in USERS[:20]:
        await stack.track(user, "Browsed")
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    shown = await asyncio.to_thread(
        CliRunner().invoke, cli, ["experiments", "end", "offer", "discount_test"]
    )
    assert shown.exit_code == 0, shown.output
    assert "ended discount_test of offer" in shown.stdout
    assert "  ended 20" in shown.stdout  # the report says so, with when
    url = "/v1/reports/journeys/offer/experiments/discount_test"
    before = (await stack.call("GET", url)).json()
    assert before["ended_at"] is not None
    assert sum(a["users"] for a in before["analysis"]["arms"]) == before["users"] > 0
    # more users arrive; the archived report does not move
    for user in USERS[20:]:
        await stack.track(user, "Browsed")
    after = (await stack.call("GET", url)).json()
    assert after == before
    journey = await stack.call("GET", "/reports/journeys/offer")
    assert 'data-metric="ended-at"' in journey.text  # the journey page marks it ended
    archived = await rows(
        stack.services.engine,
        "SELECT ended_by, configuration -> 'steps' ? 'split' AS kept FROM experiment_archives",
    )
    assert [(a["ended_by"].startswith("cli:"), a["kept"]) for a in archived] == [(True, True)]
    again = await asyncio.to_thread(
        CliRunner().invoke, cli, ["experiments", "end", "offer", "discount_test"]
    )
    assert again.exit_code == 1
    assert "ended already" in again.output
    async with stack.services.engine.begin() as conn:
        with pytest.raises(design.UnknownReport, match="ended already"):
            await service.end_experiment(
                conn, journey="offer", key="discount_test", actor=Actor("cli", "ada"),
                now=stack.services.clock(),
            )  # fmt: skip
