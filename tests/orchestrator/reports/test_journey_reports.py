"""A journey's holdout, variants and goal events flow through ingestion and come out in
its report, the same over the JSON API and the command line."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app as cli
from tests.conftest import StackFactory
from tests.support.stack import Stack
from tests.support.workspace import ARBITRATE_ONLY_KEY
from workflows.assignment import in_holdout, pick_variant

OFFER = """
journey: offer
name: Offer
category: promotional
trigger: {event: Browsed}
holdout: 25
goal: {event: Order Completed, within: 7d}
start: split
steps:
  split:
    experiment:
      key: discount_test
      variants:
        - {name: control, weight: 1, next: plain}
        - {name: discount, weight: 1, next: discounted}
  plain:
    send: {channel: email, template: hello}
    next: done
  discounted:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""
USERS = [f"user-{i:02}" for i in range(40)]


def arm_of(user: str) -> str:
    if in_holdout("offer", user, 25):
        return "held out"
    return ["control", "discount"][pick_variant("offer/discount_test", user, [1, 1])]


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    stack = await make_stack({"offer": OFFER})
    for user in USERS:
        await stack.track(user, "Browsed")
    for user in USERS:
        if arm_of(user) != "held out":
            await stack.result("offer", user)
    # every discount user buys, a third of the others do; each order is 10 or 20
    for n, user in enumerate(USERS):
        if arm_of(user) == "discount" or n % 3 == 0:
            await stack.track(user, "Order Completed", {"revenue": 10 + 10 * (n % 2)})
    return stack


def expected(arm: str) -> tuple[int, int, float]:
    users = [(n, u) for n, u in enumerate(USERS) if arm_of(u) == arm]
    buyers = [(n, u) for n, u in users if arm == "discount" or n % 3 == 0]
    return len(users), len(buyers), float(sum(10 + 10 * (n % 2) for n, _ in buyers))


async def test_the_experiment_report_counts_users_conversions_and_revenue(stack: Stack) -> None:
    response = await stack.call("GET", "/v1/reports/journeys/offer/experiments/discount_test")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["kind"], report["mode"], report["control"]) == ("experiment", "fixed", "control")
    assert report["shares"] == {"control": 0.5, "discount": 0.5}
    arms = {a["arm"]: a for a in report["analysis"]["arms"]}
    for arm in ("control", "discount"):
        users, converted, _ = expected(arm)
        assert (arms[arm]["users"], arms[arm]["conversions"]) == (users, converted), arm
        rate = arms[arm]["conversion_rate"]
        assert rate["low"] <= converted / users <= rate["high"]
    [comparison] = report["analysis"]["comparisons"]
    assert comparison["arm"] == "discount"
    lift = comparison["conversion"]
    difference = expected("discount")[1] / expected("discount")[0] - (
        expected("control")[1] / expected("control")[0]
    )
    assert lift["absolute"]["value"] == pytest.approx(difference)
    assert lift["sequential"]["difference"]["low"] <= lift["absolute"]["low"]
    assert 0 <= report["analysis"]["sample_ratio"]["p_value"] <= 1
    # the timeline ends today with everyone in
    last = report["timeline"][-1]
    assert {a["arm"]: a["users"] for a in last["arms"]} == {
        arm: expected(arm)[0] for arm in ("control", "discount")
    }


async def test_the_journey_report_shows_holdout_funnel_and_attribution(stack: Stack) -> None:
    report = (await stack.call("GET", "/v1/reports/journeys/offer")).json()
    held = sum(1 for u in USERS if arm_of(u) == "held out")
    holdout = report["holdout"]
    assert holdout["shares"] == {"control": 0.25, "treatment": 0.75}
    arms = {a["arm"]: a for a in holdout["analysis"]["arms"]}
    assert (arms["control"]["users"], arms["treatment"]["users"]) == (held, len(USERS) - held)
    held_buyers = sum(1 for n, u in enumerate(USERS) if arm_of(u) == "held out" and n % 3 == 0)
    assert arms["control"]["conversions"] == held_buyers
    # the funnel in journey order, not alphabetical
    assert [s["step"] for s in report["funnel"]] == ["split", "plain", "discounted", "done"]
    assert report["funnel"][0]["users"] == len(USERS) - held
    channels = {c["channel"]: c for c in report["attribution"]}
    assert channels["push"]["last_touch"] == expected("discount")[1]
    assert channels["email"]["last_touch"] == expected("control")[1]
    assert channels["push"]["last_touch_revenue"] == expected("discount")[2]
    assert [e["key"] for e in report["experiments"]] == ["discount_test"]


async def test_the_command_line_shows_the_same_numbers(
    stack: Stack, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(stack.workspace))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli, ["report", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    api = (await stack.call("GET", "/v1/reports/journeys/offer/experiments/discount_test")).json()
    shown = json.loads(await asyncio.to_thread(run, "experiment", "discount_test", "--json"))
    assert shown["analysis"]["arms"] == api["analysis"]["arms"]
    text = await asyncio.to_thread(run, "experiment", "discount_test")
    users, converted, _ = expected("discount")
    assert f"discount  {users} users  {converted} converted" in " ".join(text.split("  ")) or (
        f"{converted}/{users}" in text
    )
    assert "sample ratio" in text
    journey = await asyncio.to_thread(run, "journey", "offer")
    assert "holdout" in journey
    assert "split" in journey

    def refused(*args: str) -> str:
        result = CliRunner().invoke(cli, ["report", *args])
        assert result.exit_code == 1, result.output
        return str(result.stderr).strip()

    assert await asyncio.to_thread(refused, "journey", "nosuch") == (
        "no journey 'nosuch' (known: offer)"
    )
    assert await asyncio.to_thread(refused, "experiment", "nosuch", "--journey", "offer") == (
        "no experiment 'nosuch' in journey 'offer' (known: discount_test, holdout)"
    )


async def test_reports_need_the_reports_scope(stack: Stack) -> None:
    refused = await stack.call("GET", "/v1/reports/journeys/offer", key=ARBITRATE_ONLY_KEY)
    assert refused.status_code == 403
    missing = await stack.call("GET", "/v1/reports/journeys/nope")
    assert missing.status_code == 404
    unknown = await stack.call("GET", "/v1/reports/journeys/offer/experiments/nope")
    assert unknown.status_code == 404
