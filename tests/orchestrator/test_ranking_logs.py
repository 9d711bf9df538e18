"""Exploration in ranked content, and `orchestrator ranking evaluate-logs`: a stored version
judged on the items messages showed and the clicks they got, on messages the product
sent and on a simulated log whose truth is known."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from channels.ranking import Filled, ScoredItem, explore
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.cli import app
from orchestrator.ranking.logged import evaluate_version
from orchestrator.ranking.model import HybridModel, Settings
from orchestrator.tables import ranking_models
from tests.conftest import StackFactory
from tests.orchestrator.test_receipts import post_receipt, receipt
from tests.support.db import insert_messages, rows
from tests.support.model import ModelServer, running_model
from tests.support.receiver import Receiver

runner = CliRunner()
ITEMS = [f"i{n}" for n in range(8)]


async def store_version(engine: AsyncEngine, order: list[str]) -> int:
    """A stored version that ranks every user with no purchases in `order` (its
    popularity), then the other items."""
    popularity = np.array(
        [1.0 - order.index(i) / 10 if i in order else 0.01 for i in ITEMS], dtype=np.float32
    )
    model = HybridModel(
        items=ITEMS,
        neighbours=np.zeros((len(ITEMS), 0), dtype=np.int32),
        weights=np.zeros((len(ITEMS), 0), dtype=np.float32),
        popularity=popularity,
        settings=Settings(),
        trained_until=datetime.now(UTC),
    )
    async with engine.begin() as conn:
        version = await conn.scalar(
            ranking_models.insert()
            .values(
                source="test",
                window_start=datetime.now(UTC),
                window_end=datetime.now(UTC),
                purchases=0,
                items=len(ITEMS),
                status="inactive",
                reason="test",
                metrics={},
                artifact=model.dump(),
            )
            .returning(ranking_models.c.version)
        )
    return int(version)


async def load_catalogue(engine: AsyncEngine) -> None:
    await load_items(engine, [CatalogItem(id=i, name=f"Item {i}") for i in ITEMS])


def evaluate_logs(url: str, workspace: str, *args: str) -> Any:
    env = {"ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_WORKSPACE": workspace}
    return runner.invoke(app, ["ranking", "evaluate-logs", *args], env=env)


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    async with running_model() as server:
        yield server


SHOP = """
journey: shop
name: Shop
category: promotional
trigger: {event: Browsed}
start: mail
steps:
  mail:
    send:
      channel: email
      template: picks
      content:
        recommendations: {slot: home, k: 3}
    next: done
  done:
    exit: {}
"""
PICKS = {
    "picks": 'email: {subject: "Picks", '
    'text: "{% for item in recommendations %}{{ item.id }} {% endfor %}"}'
}


async def test_messages_explore_log_their_shown_items_and_a_version_is_judged_on_them(
    make_stack: StackFactory,
    engine: AsyncEngine,
    receiver: Receiver,
    model: ModelServer,
    postgres_url: str,
) -> None:
    await load_catalogue(engine)
    model.items = ITEMS  # the model ranks i0, i1, i2 on top, i3 to i7 below
    config = f"ranking:\n  url: {model.url}\n  deadline_ms: 5000\n  exploration: 0.5\n"
    stack = await make_stack(
        {"shop": SHOP}, templates=PICKS, workspace={"config": config, "channels": ("email",)}
    )
    users = [f"user-{n:02}" for n in range(24)]
    for user in users:
        await stack.track(user, "Browsed")
    for user in users:
        await stack.result("shop", user)
    sent = {
        r["user_id"]: r
        for r in await rows(engine, "SELECT id, user_id, content, content_source FROM messages")
    }
    assert set(sent) == set(users)
    explored = 0
    for message in sent.values():
        source = message["content_source"]
        assert (source["source"], source["model"], source["exploration"]) == ("model", "test-v1",
                                                                              0.5)  # fmt: skip
        assert source["pool"] == ITEMS[3:]
        shown = source["shown"]
        # the email shows the logged items in the logged order
        assert message["content"]["text"].split() == [s["item_id"] for s in shown]
        assert shown[0] == {"item_id": "i0", "position": 0, "score": 1.0, "propensity": 1.0,
                            "explored": False}  # fmt: skip
        for s in shown[1:]:
            if s["explored"]:
                explored += 1
                assert s["propensity"] == pytest.approx(0.5 / 5)
                assert s["replaced"] == ITEMS[s["position"]]
            else:
                assert (s["item_id"], s["propensity"]) == (ITEMS[s["position"]], 0.5)
    assert 0 < explored < 2 * len(users)
    # the model was asked for more than k, to have something to explore with
    assert {r["k"] for r in model.requests} == {3 + 20}

    # clicks: the top item for every third user, and i4 wherever it was shown
    for n, user in enumerate(users):
        message = sent[user]
        for s in message["content_source"]["shown"]:
            if (s["position"] == 0 and n % 3 == 0) or s["item_id"] == "i4":
                body = receipt("clicked", message["id"], item_id=s["item_id"])
                response = await post_receipt(stack, "email", body)
                assert response.status_code == 204, response.text
    # a click on something not shown is no click on a shown item
    stray = await post_receipt(stack, "email", receipt("clicked", sent[users[1]]["id"]))
    assert stray.status_code == 204

    version = await store_version(engine, ["i0", "i4", "i1"])
    # by hand: per message, the version's items that were shown where it puts them,
    # clicked, weighted by 1 / propensity
    target = ["i0", "i4", "i1"]
    by_hand, clicks, supported = 0.0, 0, 0
    for n, user in enumerate(users):
        for s in sent[user]["content_source"]["shown"]:
            clicked = (s["position"] == 0 and n % 3 == 0) or s["item_id"] == "i4"
            clicks += clicked
            if clicked and target[s["position"]] == s["item_id"]:
                by_hand += 1 / s["propensity"]
        supported += 2  # i0 at the top, i4 at 1 (in the pool); i1 at 2 never: it ranks 1st
    by_hand /= len(users)

    result = await asyncio.to_thread(
        evaluate_logs, postgres_url, str(stack.workspace), str(version), "--json"
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["messages"], answer["impressions"], answer["exploring"]) == (24, 24, 24)
    assert answer["left_out"] == {"undelivered": 0, "baseline": 0, "unlogged": 0}
    assert (answer["shown"], answer["clicks"]) == (72, clicks)
    assert answer["observed"] == pytest.approx(clicks / 24)
    assert (answer["target_slots"], answer["supported"]) == (72, supported)
    estimate = answer["estimate"]
    assert estimate["value"] == pytest.approx(by_hand)
    assert estimate["low"] <= estimate["value"] <= estimate["high"]

    shown = await asyncio.to_thread(
        evaluate_logs, postgres_url, str(stack.workspace), str(version), "--since", "1d"
    )
    assert shown.exit_code == 0, shown.output
    assert "usable: 24 impressions (72 shown items" in shown.stdout
    assert f"version {version} (ranking IPS): {by_hand:.4f}" in shown.stdout
    assert "underestimate" in shown.stdout  # i1 at position 2 could never be shown

    missing = await asyncio.to_thread(evaluate_logs, postgres_url, str(stack.workspace), "99")
    assert (missing.exit_code, missing.stderr.strip()) == (1, "there is no version 99")
    bad = await asyncio.to_thread(
        evaluate_logs, postgres_url, str(stack.workspace), "1", "--since", "a month"
    )
    assert bad.exit_code == 1
    assert "is not a duration" in bad.stderr


# A position-based click model: P(click) = attraction(item) x examination(position).
ATTRACTION = dict(zip(ITEMS, [0.30, 0.20, 0.15, 0.10, 0.40, 0.05, 0.08, 0.12], strict=True))
EXAMINATION = [1.0, 0.6, 0.4]
LOGGED_RANKING, POOL, RATE = ITEMS[:3], ITEMS[3:], 0.3


def clicks_expected(ranking: list[str]) -> float:
    return sum(ATTRACTION[i] * e for i, e in zip(ranking, EXAMINATION, strict=True))


async def simulate(engine: AsyncEngine, impressions: int, seed: int) -> None:
    """Messages whose items were explored as the recommender does, clicked by the model."""
    rng = np.random.default_rng(seed)
    scored = [ScoredItem(item_id=i, score=1 - n / 10) for n, i in enumerate(ITEMS)]
    messages, receipts = [], []
    at = datetime.now(UTC) - timedelta(days=1)
    for n in range(impressions):
        shown = explore(scored[:3], scored[3:], rate=RATE, rng=random.Random(f"sim-{seed}-{n}"))
        filled = Filled(
            items=[{"id": s.item_id} for s in shown], source="model", reason="ranked by the model",
            model="sim", confidence=0.9, slot="home", exploration=RATE, shown=shown, pool=POOL,
        )  # fmt: skip
        messages.append((f"m{n}", f"user-{n}", orjson.dumps(filled.record()).decode()))
        for s in shown:
            if rng.random() < ATTRACTION[s.item_id] * EXAMINATION[s.position]:
                body = {"type": "clicked", "data": {"message_id": f"m{n}", "item_id": s.item_id}}
                receipts.append((f"r{n}-{s.position}", f"m{n}", orjson.dumps(body).decode()))
    await insert_messages(engine, messages, receipts, at=at)


@pytest.mark.parametrize(
    "target",
    [
        ["i0", "i4", "i2"],  # explored i4 at position 1
        ["i0", "i1", "i2"],  # the logged model's own ranking
        ["i0", "i7", "i5"],  # two explored items
    ],
)
async def test_the_interval_covers_the_known_click_rate_of_a_simulated_log(
    engine: AsyncEngine, target: list[str]
) -> None:
    await load_catalogue(engine)
    await simulate(engine, impressions=3000, seed=1)
    version = await store_version(engine, target)
    found = await evaluate_version(
        engine, version=version, since=datetime.now(UTC) - timedelta(days=30),
        events=["Order Completed"],
    )  # fmt: skip
    result = found.result
    assert (found.messages, result.impressions, result.exploring) == (3000, 3000, 3000)
    assert (result.target_slots, result.supported) == (9000, 9000)  # every pair could count
    # the logged policy: the top item, then each position's item or (at RATE) a pool item
    pool_attraction = sum(ATTRACTION[i] for i in POOL) / len(POOL)
    logged = ATTRACTION["i0"] + sum(
        EXAMINATION[j] * ((1 - RATE) * ATTRACTION[LOGGED_RANKING[j]] + RATE * pool_attraction)
        for j in (1, 2)
    )
    assert result.observed == pytest.approx(logged, abs=0.03)
    estimate = result.estimate
    assert estimate.low is not None
    assert estimate.high is not None
    truth = clicks_expected(target)
    assert estimate.low <= truth <= estimate.high, (estimate, truth)
    assert estimate.high - estimate.low < 0.25
