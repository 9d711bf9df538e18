"""`orchestrator experiments evaluate-policy`: another allocation of an experiment's arms,
judged on assignments the product logged and on a simulated log whose truth is known."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.deploy import deploy_workspace
from orchestrator.experiments.evaluation import EvaluationError, evaluate_policy, parse_policy
from orchestrator.reports import service
from orchestrator.workspace import load_workspace
from tests.conftest import StackFactory
from tests.orchestrator.test_receipts import post_receipt, receipt
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.workspace import TEMPLATES, write_workspace
from tests.workflows.test_bandit import BANDIT, COPY_TEMPLATES, COPY_TEST, EARLIER

runner = CliRunner()
ARMS = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("policy", "shares"),
    [
        ("always:b", {"a": 0.0, "b": 1.0, "c": 0.0}),
        ("split:a=1,b=1,c=2", {"a": 0.25, "b": 0.25, "c": 0.5}),
        ("split:c=3, a=1", {"a": 0.25, "b": 0.0, "c": 0.75}),
        ("split:a=0.5,b=0.5", {"a": 0.5, "b": 0.5, "c": 0.0}),
        ("logged", None),
    ],
)
def test_policies_parse_into_shares_of_the_arms(
    policy: str, shares: dict[str, float] | None
) -> None:
    assert parse_policy(policy, ARMS).shares == shares


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("always:d", "unknown arm 'd' (arms: a, b, c)"),
        ("split:a=1,d=2", "unknown arm 'd'"),
        ("split:a=1,a=2", "arm 'a' appears twice"),
        ("split:a=x", "bad weight in 'a=x'"),
        ("split:a", "bad weight in 'a'"),
        ("split:a=-1,b=2", "bad weight in 'a=-1'"),
        ("split:a=0,b=0", "weights are all zero"),
        ("always", "bad policy 'always'"),
        ("sometimes:a", "bad policy 'sometimes:a'"),
        ("logged:a", "bad policy"),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_problem(policy: str, error: str) -> None:
    with pytest.raises(EvaluationError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(policy, ARMS)


def invoke(url: str, *args: str) -> Any:
    return runner.invoke(app, ["experiments", "evaluate-policy", *args], env={
        "ORCHESTRATOR_DATABASE_URL": url})  # fmt: skip


async def cli_json(url: str, *args: str) -> dict[str, Any]:
    result = await asyncio.to_thread(invoke, url, *args, "--json")
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


OFFER = """
journey: offer
name: Offer
category: promotional
trigger: {event: Browsed}
goal: {event: Order Completed, within: 7d}
start: split
steps:
  split:
    experiment:
      key: discount_test
      variants:
        - {name: control, weight: 3, next: plain}
        - {name: discount, weight: 1, next: discounted}
  plain:
    send: {channel: email, template: hello}
    next: done
  discounted:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_a_fixed_split_run_by_the_product_is_evaluated_from_its_log(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver, postgres_url: str
) -> None:
    stack = await make_stack({"offer": OFFER})
    users = [f"user-{i:02}" for i in range(40)]
    for user in users:
        await stack.track(user, "Browsed")
    for user in users:
        await stack.result("offer", user)
    logged = {
        r["user_id"]: (r["arm"], r["propensity"], r["mode"])
        for r in await rows(engine, "SELECT user_id, arm, propensity, mode FROM assignments")
    }
    assert set(logged) == set(users)
    assert {(a, p, m) for a, p, m in logged.values()} == {
        ("control", 0.75, "fixed"), ("discount", 0.25, "fixed")
    }  # fmt: skip
    # every discount user buys, every third control user does; every fifth clicks
    arm = {u: logged[u][0] for u in users}
    buyers = {u for n, u in enumerate(users) if arm[u] == "discount" or n % 3 == 0}
    for user in sorted(buyers):
        await stack.track(user, "Order Completed", {"revenue": 10})
    clickers = set(users[::5])
    messages = await rows(engine, "SELECT id, user_id FROM messages")
    for message in messages:
        if message["user_id"] in clickers:
            response = await post_receipt(stack, "email", receipt("clicked", message["id"]))
            assert response.status_code == 204, response.text

    discount = [u for u in users if arm[u] == "discount"]
    control = [u for u in users if arm[u] == "control"]
    assert discount
    assert control
    answer = await cli_json(
        postgres_url, "--journey", "offer", "--experiment", "discount_test",
        "--policy", "always:discount",
    )  # fmt: skip
    assert (answer["kind"], answer["mode"], answer["reward"]) == ("experiment", "fixed", "goal")
    assert (answer["users"], answer["left_out_without_propensity"]) == (40, 0)
    assert answer["observed"] == pytest.approx(len(buyers) / 40)
    arms = {a["arm"]: a for a in answer["arms"]}
    assert arms["discount"]["users"] == len(discount)
    assert arms["discount"]["observed"] == 1.0
    assert arms["control"]["observed"] == pytest.approx(len(buyers & set(control)) / len(control))
    assert (arms["discount"]["target_share"], arms["control"]["target_share"]) == (1.0, 0.0)
    estimates = answer["estimates"]
    # IPS: each discount buyer weighted by 1 / 0.25; SNIPS and DR (with each arm's rate
    # as the reward model): the discount arm's own rate
    assert estimates["ips"]["value"] == pytest.approx(len(discount) / 0.25 / 40)
    assert estimates["snips"]["value"] == pytest.approx(1.0)
    assert estimates["doubly_robust"]["value"] == pytest.approx(1.0)
    assert estimates["ips"]["effective_sample_size"] == pytest.approx(len(discount))
    for figure in estimates.values():
        assert figure["low"] <= figure["value"] <= figure["high"]

    # the logged policy judged on its own log is what it observed
    itself = await cli_json(
        postgres_url, "--journey", "offer", "--experiment", "discount_test", "--policy", "logged"
    )
    assert itself["estimates"]["ips"]["value"] == pytest.approx(itself["observed"])
    assert itself["estimates"]["snips"]["value"] == pytest.approx(itself["observed"])

    clicks = await cli_json(
        postgres_url, "--journey", "offer", "--experiment", "discount_test",
        "--policy", "split:control=1,discount=1", "--reward", "click",
    )  # fmt: skip
    assert clicks["observed"] == pytest.approx(len(clickers) / 40)
    by_arm = {a["arm"]: a["successes"] for a in clicks["arms"]}
    assert by_arm == {
        "control": len(clickers & set(control)), "discount": len(clickers & set(discount))
    }  # fmt: skip
    weighted = (by_arm["control"] * 0.5 / 0.75 + by_arm["discount"] * 0.5 / 0.25) / 40
    assert clicks["estimates"]["ips"]["value"] == pytest.approx(weighted)

    shown = await asyncio.to_thread(
        invoke, postgres_url, "--journey", "offer", "--experiment", "discount_test",
        "--policy", "always:discount",
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "40 assigned users with a propensity" in shown.stdout
    assert f"logged policy, observed: {len(buyers) / 40:.4f}" in shown.stdout
    for label in ("IPS", "SNIPS", "doubly robust"):
        assert any(line.startswith(label) for line in shown.stdout.splitlines())

    for args, error in [
        (("--journey", "nope", "--experiment", "x", "--policy", "logged"),
         "no journey 'nope' (known: offer)"),
        (("--journey", "offer", "--experiment", "nope", "--policy", "logged"),
         "no experiment 'nope' in journey 'offer' (known: discount_test)"),
        (("--journey", "offer", "--experiment", "discount_test", "--policy", "always:gold"),
         "unknown arm 'gold' (arms: control, discount)"),
        (("--journey", "offer", "--experiment", "discount_test", "--policy", "most:control"),
         "bad policy 'most:control'"),
    ]:  # fmt: skip
        failed = await asyncio.to_thread(invoke, postgres_url, *args)
        assert failed.exit_code == 1
        [line] = failed.stderr.strip().splitlines()
        assert line.startswith(error), line


async def test_a_bandit_is_evaluated_from_its_draws_leaving_out_rows_without_a_propensity(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"hero": BANDIT})
    # 40 earlier users, logged before propensities were: left out
    async with engine.begin() as conn:
        for n in range(40):
            enrollment = await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at, converted_at)"
                    " VALUES ('hero', 1, :u, 'completed', :u, now(), :c) RETURNING id"
                ),
                {"u": f"past-{n}", "c": EARLIER if n % 2 else None},
            )
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id,"
                    " arm, enrollment_id) VALUES ('hero', 'experiment', 'hero_copy', 'bandit',"
                    " :u, :v, :e)"
                ),
                {"u": f"past-{n}", "v": "bold" if n % 2 else "plain", "e": enrollment},
            )
    users = [f"new-{n}" for n in range(30)]
    for user in users:
        await stack.track(user, "Visited")
    for user in users:
        await stack.result("hero", user)
    for user in users[::3]:
        await stack.track(user, "Order Completed")
    drawn = await rows(
        engine,
        "SELECT a.arm, a.propensity, e.converted_at IS NOT NULL AS won FROM assignments a"
        " JOIN enrollments e ON e.id = a.enrollment_id WHERE a.user_id LIKE 'new-%'",
    )
    assert len(drawn) == 30
    assert all(0 < d["propensity"] < 1 for d in drawn)
    assert sum(d["won"] for d in drawn) == 10

    found = await evaluate_policy(
        engine, journey="hero", experiment="hero_copy", policy="always:bold"
    )
    assert (found.mode, found.users, found.left_out) == ("bandit", 30, 40)
    assert found.observed == pytest.approx(10 / 30)
    by_hand = sum(d["won"] / d["propensity"] for d in drawn if d["arm"] == "bold") / 30
    assert found.report.ips.value == pytest.approx(by_hand)
    weights = [1 / d["propensity"] for d in drawn if d["arm"] == "bold"]
    assert found.report.ips.effective_sample_size == pytest.approx(
        sum(weights) ** 2 / sum(w * w for w in weights)
    )
    # the report weighs the same draws the same way
    async with engine.connect() as conn:
        report = await service.experiment(conn, journey="hero", key="hero_copy",
                                          now=datetime.now(UTC))  # fmt: skip
    assert (report.mode, report.users_without_propensity) == ("bandit", 40)
    assert report.bandit is not None
    for arm in report.bandit:
        mine = [d for d in drawn if d["arm"] == arm.arm]
        assert arm.users == len(mine)
        if mine:
            hajek = sum(d["won"] / d["propensity"] for d in mine) / sum(
                1 / d["propensity"] for d in mine
            )
            assert arm.hajek.value == pytest.approx(hajek)
    assert sum(arm.users for arm in report.bandit) == 30


SIMULATED = """
journey: sim
name: Simulated
trigger: {event: Visited}
goal: {event: Order Completed, within: 7d}
start: pick
steps:
  pick:
    experiment:
      key: sim_test
      mode: bandit
      variants:
        - {name: a, next: done}
        - {name: b, next: done}
        - {name: c, next: done}
  done:
    exit: {}
"""
RATES = {"a": 0.05, "b": 0.10, "c": 0.20}
# The logging policy moved traffic as a bandit would: early users mostly on a, later
# ones mostly on c (so propensities differ by row).
EARLY, LATE = [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]


async def simulate(engine: AsyncEngine, tmp_path: Path, users: int, seed: int) -> None:
    root = write_workspace(tmp_path / "sim", receiver_url="http://127.0.0.1:9",
                           journeys={"sim": SIMULATED})  # fmt: skip
    await deploy_workspace(engine, load_workspace(root))
    rng = np.random.default_rng(seed)
    names, arms, chances, converted = [], [], [], []
    for n in range(users):
        shares = EARLY if n < users // 2 else LATE
        arm = int(rng.choice(3, p=shares))
        names.append(f"sim-{n}")
        arms.append(ARMS[arm])
        chances.append(shares[arm])
        converted.append(bool(rng.random() < RATES[ARMS[arm]]))
    params = {"u": names, "a": arms, "p": chances, "c": converted}
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO enrollments (journey_key, version, user_id, status,"
                " trigger_message_id, entered_at, converted_at)"
                " SELECT 'sim', 1, u, 'completed', u, now(), CASE WHEN c THEN now() END"
                " FROM unnest(CAST(:u AS text[]), CAST(:c AS boolean[])) AS t(u, c)"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO assignments (journey_key, version, kind, experiment_key, mode,"
                " user_id, enrollment_id, arm, propensity)"
                # the first 25 were assigned before propensities were logged
                " SELECT 'sim', 1, 'experiment', 'sim_test', 'bandit', t.u, e.id, t.a,"
                "  CASE WHEN t.n <= 25 THEN NULL ELSE t.p END"
                " FROM unnest(CAST(:u AS text[]), CAST(:a AS text[]), CAST(:p AS float8[]))"
                "  WITH ORDINALITY AS t(u, a, p, n)"
                " JOIN enrollments AS e ON e.user_id = t.u AND e.journey_key = 'sim'"
            ),
            params,
        )


@pytest.mark.parametrize(
    ("policy", "truth"),
    [
        ("always:b", 0.10),
        ("always:c", 0.20),
        ("split:a=1,b=1,c=2", 0.25 * 0.05 + 0.25 * 0.10 + 0.5 * 0.20),
    ],
)
async def test_the_intervals_cover_the_known_value_of_a_simulated_log(
    engine: AsyncEngine, tmp_path: Path, policy: str, truth: float
) -> None:
    await simulate(engine, tmp_path, users=4000, seed=7)
    found = await evaluate_policy(engine, journey="sim", experiment="sim_test", policy=policy)
    assert (found.users, found.left_out) == (3975, 25)
    logged_truth = sum(
        share * sum(s * RATES[a] for s, a in zip(shares, ARMS, strict=True))
        for share, shares in ((0.5, EARLY), (0.5, LATE))
    )
    assert found.observed == pytest.approx(logged_truth, abs=0.02)
    report = found.report
    assert report.doubly_robust is not None
    for estimated in (report.ips, report.snips, report.doubly_robust):
        assert estimated.low is not None
        assert estimated.high is not None
        assert estimated.low <= truth <= estimated.high, (estimated, truth)
        # and the interval is informative: narrower than the gap between the arms
        assert estimated.high - estimated.low < 0.08
    assert report.ips.effective_sample_size is not None
    assert 0 < report.ips.effective_sample_size < found.users


async def test_a_sends_template_variants_are_judged_by_clicks_on_their_own_messages(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    root = write_workspace(tmp_path / "copy", receiver_url="http://127.0.0.1:9",
                           journeys={"copy": COPY_TEST}, templates={
                               **COPY_TEMPLATES, "hello": TEMPLATES["hello"]})  # fmt: skip
    await deploy_workspace(engine, load_workspace(root))
    # four users per template; a click counts only on a message of one of the variants
    async with engine.begin() as conn:
        for n in range(8):
            template = "copy_b" if n % 2 else "copy_a"
            enrollment = await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at) VALUES ('copy', 1, :u, 'completed', :u,"
                    " now()) RETURNING id"
                ),
                {"u": f"u{n}"},
            )
            sends = [(f"m{n}", template, n < 4), (f"x{n}", "hello", True)]
            for message, sent, clicked in sends:
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, enrollment_id, journey_key, version, user_id,"
                        " step, channel, template, status, clicked_at) VALUES (:m, :e, 'copy',"
                        " 1, :u, 'mail', 'email', :t, 'delivered', :c)"
                    ),
                    {"m": message, "e": enrollment, "u": f"u{n}", "t": sent,
                     "c": EARLIER if clicked else None},
                )  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id,"
                    " arm, enrollment_id, propensity) VALUES ('copy', 'template', 'subject_test',"
                    " 'bandit', :u, :t, :e, :p)"
                ),
                {"u": f"u{n}", "t": template, "e": enrollment, "p": 0.8 if n % 2 else 0.2},
            )
    found = await evaluate_policy(
        engine, journey="copy", experiment="subject_test", policy="always:copy_b", reward="click"
    )
    assert (found.kind, found.mode, found.users) == ("template", "bandit", 8)
    assert [(a.arm, a.users, a.successes) for a in found.arms] == [
        ("copy_a", 4, 2), ("copy_b", 4, 2)
    ]  # fmt: skip
    # copy_b's clickers are users 1 and 3, each drawn with a chance of 0.8
    assert found.report.ips.value == pytest.approx(2 / 0.8 / 8)


def test_plan_says_how_many_users_an_experiment_needs() -> None:
    from orchestrator.reports.power import users_per_arm_for_rate

    result = CliRunner().invoke(app, ["experiments", "plan", "--rate", "0.05", "--lift", "0.1",
                                      "--arms", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    per_arm = users_per_arm_for_rate(0.05, 0.1)
    assert per_arm is not None
    assert result.stdout.startswith(f"{per_arm:,} users per arm, {3 * per_arm:,} in all")
    for bad in (["--rate", "5", "--lift", "0.1"], ["--rate", "0.05", "--lift", "0"],
                ["--rate", "0.6", "--lift", "1"], ["--rate", "0.05", "--lift", "0.1",
                                                   "--arms", "1"]):  # fmt: skip
        refused = CliRunner().invoke(app, ["experiments", "plan", *bad])
        assert refused.exit_code == 2, (bad, refused.output)
        assert "Invalid value" in refused.output
