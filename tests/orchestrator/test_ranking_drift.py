"""Input drift of the active ranking version: the training profile stored with it, live
traffic binned the same way, PSI and the unseen share against `ranking.drift`, the
`ranking_drift` alert and `orchestrator ranking drift`."""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.cli import app
from orchestrator.ranking import drift
from orchestrator.ranking.config import DriftConfig
from orchestrator.ranking.retail import Purchase
from orchestrator.ranking.rollout import activate
from orchestrator.ranking.versions import stored_purchases, train
from orchestrator.reports import alerts
from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_workspace
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.workspace import NOOP, write_workspace

ITEMS = [f"I{n:02d}" for n in range(100)]
NEW_ITEMS = [f"N{n:02d}" for n in range(20)]
# Zipf-like popularity: I00 is bought most, I99 least.
WEIGHTS = [1 / (n + 1) for n in range(len(ITEMS))]
USERS = [f"u{n}" for n in range(400)]
TRAINING_DAYS, LIVE_DAYS, ORDERS_A_DAY = 60, 7, 30


@dataclass(frozen=True)
class Order:
    id: str
    user: str
    at: datetime
    items: list[str]


def steady(start: datetime, days: int, *, prefix: str, seed: int) -> list[Order]:
    """Orders of two lines each, by users of one population, items by popularity."""
    rng = random.Random(seed)
    return [
        Order(
            f"{prefix}-{d}-{n}", rng.choice(USERS),
            start + timedelta(days=d, minutes=rng.randrange(24 * 60)),
            rng.choices(ITEMS, WEIGHTS, k=2),
        )
        for d in range(days) for n in range(ORDERS_A_DAY)
    ]  # fmt: skip


def shifted(start: datetime, days: int, *, seed: int, orders: int = ORDERS_A_DAY) -> list[Order]:
    """Orders by new users, of formerly rare items and of items new to the catalogue."""
    rng = random.Random(seed)
    return [
        Order(
            f"shift-{d}-{n}", f"newcomer-{rng.randrange(300)}",
            start + timedelta(days=d, minutes=rng.randrange(24 * 60)),
            [rng.choice(ITEMS[70:]), rng.choice(NEW_ITEMS)],
        )
        for d in range(days) for n in range(orders)
    ]  # fmt: skip


async def store(engine: AsyncEngine, orders: list[Order]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            [
                {"id": o.id, "user": o.user, "at": o.at,
                 "props": orjson.dumps({"products": [{"product_id": i} for i in o.items]})
                 .decode()}
                for o in orders
            ],
        )  # fmt: skip


async def trained_version(engine: AsyncEngine, now: datetime) -> int:
    """The catalogue, 60 days of steady orders up to a week ago, and a version trained on
    them made the active one."""
    await load_items(engine, [CatalogItem(id=i, name=f"Item {i}") for i in ITEMS + NEW_ITEMS])
    start = now - timedelta(days=TRAINING_DAYS + LIVE_DAYS)
    await store(engine, steady(start, TRAINING_DAYS, prefix="past", seed=1))
    purchases, items = await stored_purchases(engine, ["Order Completed"])
    version = (await train(engine, purchases, items, source="events", actor=command_line())).version
    await activate(engine, version, actor=command_line(), now=datetime.now(UTC))
    return version


async def measured(engine: AsyncEngine, now: datetime, **config: object) -> drift.Drift:
    async with engine.connect() as conn:
        return await drift.measure(
            conn, config=DriftConfig(**config), events=["Order Completed"], now=now
        )


def live_start(now: datetime) -> datetime:
    return now - timedelta(days=LIVE_DAYS) + timedelta(minutes=1)


async def test_drift_is_near_zero_when_live_traffic_is_drawn_like_training(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    version = await trained_version(engine, now)
    [profile] = await rows(engine, "SELECT profile FROM ranking_models")
    stored = profile["profile"]
    assert stored["purchases"] == TRAINING_DAYS * ORDERS_A_DAY * 2
    assert len(stored["items"]) == len(ITEMS)  # every item was bought at least once
    assert stored["item_counts"][-1] == 0  # nothing unseen in training
    await store(engine, steady(live_start(now), LIVE_DAYS, prefix="live", seed=2))
    found = await measured(engine, now)
    assert found.status == "steady", found.summary
    assert found.version == version
    figures = {f.name: f.value for f in found.figures}
    assert figures["item_psi"] is not None
    assert figures["item_psi"] < 0.1
    assert figures["history_psi"] is not None
    assert figures["history_psi"] < 0.1
    assert figures["unseen_share"] == 0
    assert found.counts["live_purchases"] == LIVE_DAYS * ORDERS_A_DAY * 2
    assert found.counts["unseen_purchases"] == 0
    assert found.summary.startswith(f"version {version}: no drift (item popularity PSI 0.0")


async def test_a_shifted_stream_passes_every_threshold(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    version = await trained_version(engine, now)
    orders = shifted(live_start(now), LIVE_DAYS, seed=3)
    # a product the catalogue does not list is left out (as training leaves it out)
    orders.append(Order("unlisted", "newcomer-0", now - timedelta(hours=1), ["ZZ-1"]))
    await store(engine, orders)
    found = await measured(engine, now)
    assert found.status == "drifted"
    figures = {f.name: f for f in found.figures}
    assert all(f.passed for f in figures.values())
    assert figures["item_psi"].value is not None
    assert figures["item_psi"].value > 1
    assert figures["history_psi"].value is not None
    assert figures["history_psi"].value > 0.2
    lines = LIVE_DAYS * ORDERS_A_DAY * 2
    assert found.counts["live_purchases"] == lines
    assert found.counts["unseen_purchases"] == lines // 2  # one new item per order
    assert found.counts["outside_catalogue"] == 1
    assert figures["unseen_share"].value == pytest.approx(0.5)
    assert found.summary.startswith(f"version {version}'s input drifted: item popularity PSI ")
    assert "unseen items 50% > 15%" in found.summary
    # the same stream under looser thresholds is not drift
    loose = await measured(engine, now, item_psi=50, history_psi=50, unseen_share=0.9)
    assert loose.status == "steady"


async def test_too_little_traffic_is_not_drift(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    await trained_version(engine, now)
    await store(engine, shifted(live_start(now), 2, seed=4, orders=40))  # 160 lines
    found = await measured(engine, now)
    assert found.status == "not enough traffic"
    assert not found.drifted
    assert found.figures == []
    assert found.counts["live_purchases"] == 160
    assert "160 purchases of catalogue items in the window (at least 200" in found.summary
    # with enough purchases but few active users, history length is not measured
    found = await measured(engine, now, min_purchases=100, min_users=500)
    history = next(f for f in found.figures if f.name == "history_psi")
    assert history.value is None
    assert not history.passed
    assert "at least 500 are needed" in drift.describe(history)


async def test_a_version_trained_before_drift_has_no_profile(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    assert (await measured(engine, now)).status == "no active version"
    version = await trained_version(engine, now)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE ranking_models SET profile = NULL"))
    found = await measured(engine, now)
    assert found.status == "no training profile"
    assert found.summary.startswith(f"version {version} has no training profile")


@pytest.mark.parametrize(
    ("expected", "actual", "value"),
    [
        ([10, 20, 70], [1, 2, 7], 0.0),
        # (0.5 - 0.25) ln(0.5 / 0.25) + (0.5 - 0.75) ln(0.5 / 0.75)
        ([25, 75], [50, 50], 0.25 * math.log(2) - 0.25 * math.log(2 / 3)),
        # an empty bin counts as a share of 0.001 (the floor), never as zero
        ([100, 0], [50, 50], (0.5 - 1) * math.log(0.5) + (0.5 - 0.001) * math.log(500)),
    ],
)
def test_population_stability_index(expected: list[int], actual: list[int], value: float) -> None:
    assert drift.psi(expected, actual) == pytest.approx(value)


def test_the_training_profile_bins_items_by_equal_mass_and_histories_by_powers_of_two() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    # one item with half the purchases, the other half spread over 50 items
    purchases = [Purchase(f"u{n % 7}", "HOT", at) for n in range(500)]
    purchases += [Purchase(f"v{n}", f"C{n % 50}", at + timedelta(hours=n)) for n in range(500)]
    profile = drift.training_profile(purchases, window=timedelta(days=365))
    counts = profile["item_counts"]
    assert counts[0] == 500
    assert counts[-1] == 0
    assert profile["items"]["HOT"] == 0
    assert sum(counts) == 1000
    assert all(c > 0 for c in counts[:-1])
    # (the hot item's half leaves empty bins that are dropped, not kept at zero)
    assert len(counts) == 7
    # users u0..u6 bought one distinct item each; v0..v499 one each
    assert profile["history_counts"] == [507, 0, 0, 0, 0, 0, 0, 0, 0]
    assert drift.history_counts([1, 2, 3, 4, 5, 8, 9, 200], drift.HISTORY_EDGES) == [
        1, 1, 2, 2, 1, 0, 0, 0, 1,
    ]  # fmt: skip
    # only the users active in the last `window` of training count for history lengths
    recent = drift.training_profile(purchases, window=timedelta(hours=10))
    assert recent["users"] == 10


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("item_psi: -0.1", "ranking.drift.item_psi: Input should be greater than 0"),
        ("unseen_share: 1.5", "ranking.drift.unseen_share: Input should be less than or equal"),
        ("window: soon", "ranking.drift.window: 'soon' is not a duration"),
        ("min_purchases: 0", "ranking.drift.min_purchases: Input should be greater than or"),
        ("psi: 0.2", "ranking.drift.psi: unknown key"),
    ],
)
def test_bad_drift_settings_are_refused_at_their_position(
    tmp_path: Path, setting: str, message: str
) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:1", journeys={},
                           config=f"ranking:\n  drift:\n    {setting}\n")  # fmt: skip
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith("orchestrator.yaml:"), problem
    assert message in problem, problem


def test_drift_settings_default_and_load(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:1", journeys={},
                           config="ranking:\n  drift: {window: 3d, item_psi: 0.25}\n")  # fmt: skip
    config = load_workspace(root).config.ranking.drift
    assert (config.window, config.item_psi, config.history_psi, config.unseen_share,
            config.min_purchases, config.cooldown) == (
        timedelta(days=3), 0.25, 0.2, 0.15, 200, timedelta(days=1))  # fmt: skip


async def test_drift_is_an_alert_raised_once_and_resolved_when_it_clears(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"noop": NOOP}, workspace={"config": "ranking:\n  builtin: true\n"})
    now = datetime.now(UTC)
    version = await trained_version(engine, now)
    await store(engine, shifted(live_start(now), LIVE_DAYS, seed=5))
    [raised] = await alerts.check(stack.services, now=now)
    assert (raised.kind, raised.subject) == ("ranking_drift", "ranking")
    assert raised.summary.startswith(f"ranking, last 1w: version {version}'s input drifted: ")
    assert raised.summary.endswith("unseen items 50% > 15%")
    assert set(raised.details["passed"]) == {"item_psi", "history_psi", "unseen_share"}
    assert await alerts.check(stack.services, now=now + timedelta(minutes=15)) == []
    # too little traffic tells nothing: the alert stays open
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM events WHERE message_id LIKE 'shift-%'"))
    assert await alerts.check(stack.services, now=now + timedelta(minutes=30)) == []
    [alert] = await rows(engine, "SELECT kind, resolved_at FROM alerts")
    assert alert == {"kind": "ranking_drift", "resolved_at": None}
    # traffic like training's again: resolved
    await store(engine, steady(live_start(now), LIVE_DAYS, prefix="live", seed=6))
    later = now + timedelta(minutes=45)
    assert await alerts.check(stack.services, now=later) == []
    [alert] = await rows(engine, "SELECT kind, resolved_at FROM alerts")
    assert alert == {"kind": "ranking_drift", "resolved_at": later}


runner = CliRunner()


async def test_the_drift_command(engine: AsyncEngine, postgres_url: str, tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:1", journeys={})
    env = {"ORCHESTRATOR_DATABASE_URL": postgres_url, "ORCHESTRATOR_WORKSPACE": str(root)}
    nothing = await asyncio.to_thread(runner.invoke, app, ["ranking", "drift"], env=env)
    assert nothing.exit_code == 0, nothing.output
    assert nothing.output.startswith("no active version: nothing to measure drift against")
    now = datetime.now(UTC)
    version = await trained_version(engine, now)
    await store(engine, shifted(live_start(now), LIVE_DAYS, seed=7))
    shown = await asyncio.to_thread(runner.invoke, app, ["ranking", "drift"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"version {version}'s input drifted: ")
    assert "420 purchases by " in lines[1]
    assert lines[2].startswith("  DRIFT item popularity PSI ")
    assert lines[4] == "  DRIFT unseen items 50% > 15%"
    as_json = await asyncio.to_thread(runner.invoke, app, ["ranking", "drift", "--json"], env=env)
    found = json.loads(as_json.output)
    assert (found["status"], found["version"]) == ("drifted", version)
    assert found["counts"]["unseen_purchases"] == 210
    assert [f["name"] for f in found["figures"] if f["passed"]] == [
        "item_psi", "history_psi", "unseen_share",
    ]  # fmt: skip


def test_a_schedule_with_an_unknown_mode_is_refused() -> None:
    refused = runner.invoke(app, ["ranking", "schedule", "--when", "sometimes"])
    assert refused.exit_code == 1
    assert "--when: 'sometimes' is not one of interval, drift, both" in refused.output
    refused = runner.invoke(app, ["ranking", "schedule", "--when", "drift", "--check-every", "x"])
    assert refused.exit_code == 1
    assert "'x' is not a duration" in refused.output
