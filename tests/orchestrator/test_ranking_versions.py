"""Model versions on real Postgres: trained, compared, activated, rolled back, served."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from channels.ranking import RankingError, RankRequest, Recommendations
from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.cli import app
from orchestrator.ranking.cards import card
from orchestrator.ranking.config import RankingMonitoringConfig
from orchestrator.ranking.retail import Dataset, read_retail
from orchestrator.ranking.rollout import activate
from orchestrator.ranking.schedule import RankingActivities
from orchestrator.ranking.serving import BuiltInRanker
from orchestrator.ranking.versions import (
    VersionError,
    stored_purchases,
    train,
    versions,
)
from orchestrator.worker import build_channel_deps
from orchestrator.workspace import WorkspaceConfig
from tests.support.db import rows

NOW = datetime(2026, 11, 28, tzinfo=UTC)
SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return read_retail(SLICE)


async def statuses(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as conn:
        return {v["version"]: v["status"] for v in await versions(conn)}


async def test_a_better_model_goes_live_and_a_worse_one_does_not(
    engine: AsyncEngine, dataset: Dataset
) -> None:
    first = await train(
        engine, dataset.purchases, dataset.items, source="slice", actor=command_line()
    )
    assert (first.version, first.status) == (1, "active")
    assert first.metrics["candidate"] > first.metrics["popularity"]
    assert "beats popularity" in first.reason

    # trained on the first third of the time only: worse on its own held-out purchases
    # than the active version
    times = sorted(p.at for p in dataset.purchases)
    early = [p for p in dataset.purchases if p.at < times[len(times) // 3]]
    second = await train(engine, early, dataset.items, source="early slice", actor=command_line())
    assert second.status == "rejected"
    assert "version 1" in second.reason  # short of it, or older data than it learnt from
    assert second.metrics["active"]["version"] == 1
    assert await statuses(engine) == {1: "active", 2: "rejected"}

    # ops can still switch to it, and back (the rollback); it stays marked rejected
    await activate(engine, now=NOW, actor=command_line(), version=2)
    assert await statuses(engine) == {1: "inactive", 2: "active"}
    await activate(engine, now=NOW, actor=command_line(), version=1)
    assert await statuses(engine) == {1: "active", 2: "rejected"}
    with pytest.raises(VersionError, match="no version 9"):
        await activate(engine, now=NOW, actor=command_line(), version=9)
    assert await statuses(engine) == {1: "active", 2: "rejected"}

    # trained again on the same purchases: the active version's recipe is judged on what
    # the candidate saw (not on purchases it learnt from), and the same goes live
    third = await train(
        engine, dataset.purchases, dataset.items, source="slice", actor=command_line()
    )
    assert third.status == "active", third.reason
    assert "matches or beats version 1" in third.reason
    assert third.metrics["active"]["ndcg@10"] == pytest.approx(third.metrics["candidate"])


async def test_workers_serve_the_active_version_and_follow_switches(
    engine: AsyncEngine, dataset: Dataset
) -> None:
    ranker = BuiltInRanker(engine, events=["Order Completed"], check_every=0)
    request = RankRequest(user_id="u1", slot="home", k=5, exclude=["22423"])
    with pytest.raises(RankingError, match="no ranking model version is active"):
        await ranker.rank(request)

    await train(engine, dataset.purchases, dataset.items, source="slice", actor=command_line())
    bought = ["85123A", "71053"]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                " 'u1', CAST(:props AS jsonb), :at, :at)"
            ),
            {
                "id": str(uuid.uuid4()),
                "props": orjson.dumps({"products": [{"product_id": i} for i in bought]}).decode(),
                "at": datetime.now(UTC) - timedelta(days=1),
            },
        )
    ranking = await ranker.rank(request)
    assert ranking.model == "hybrid-v1"
    assert len(ranking.items) == 5
    assert not {i.item_id for i in ranking.items} & {*bought, "22423"}
    assert ranking.confidence > 0
    stranger = await ranker.rank(request.model_copy(update={"user_id": "nobody"}))
    assert stranger.confidence == 0

    times = sorted(p.at for p in dataset.purchases)
    early = [p for p in dataset.purchases if p.at < times[len(times) // 3]]
    await train(engine, early, dataset.items, source="early slice", actor=command_line())
    await activate(engine, now=NOW, actor=command_line(), version=2)
    assert (await ranker.rank(request)).model == "hybrid-v2"  # no restart needed


async def test_training_from_stored_events_uses_the_catalogue(engine: AsyncEngine) -> None:
    await load_items(
        engine,
        [
            CatalogItem(id=f"SKU-{i}", name=f"Item {i % 7} colour {i % 3}", price=i)
            for i in range(1, 40)
        ],
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for n in range(600):
        user = f"user-{n % 60}"
        basket = [f"SKU-{1 + (n * 7 + j) % 39}" for j in range(3)]
        events.append(
            {"id": f"order-{n}", "user": user, "at": start + timedelta(hours=n),
             "props": orjson.dumps({"products": [{"product_id": s} for s in basket]}).decode()}
        )  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            events,
        )
    purchases, items = await stored_purchases(engine, ["Order Completed"])
    assert len(purchases) == 1800
    assert len(items) == 39
    trained = await train(engine, purchases, items, source="events", actor=command_line())
    [row] = await rows(engine, "SELECT source, purchases, items, window_start FROM ranking_models")
    assert row == {"source": "events", "purchases": 1800, "items": 39, "window_start": start}
    assert trained.status in ("active", "rejected")
    with pytest.raises(VersionError, match="not enough purchases"):
        await train(engine, purchases[:3], items, source="events", actor=command_line())

    # a scheduled run's card has the metrics by `ranking.monitoring.by`, as `train --by`
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) SELECT 'user-' || n,"
                 " jsonb_build_object('tier', CASE WHEN n % 2 = 0 THEN 'gold' ELSE 'silver' END)"
                 " FROM generate_series(0, 59) AS n")
        )  # fmt: skip
    scheduled = RankingActivities(
        engine, events=["Order Completed"], monitoring=RankingMonitoringConfig(by="tier")
    )
    said = await scheduled.train_ranking_model()
    async with engine.connect() as conn:
        found = await card(conn, int(said.split()[1].rstrip(":")))
    assert found is not None
    assert {g["name"] for g in found["by_group"]["groups"]} <= {"gold", "silver", "other"}
    assert sum(g["users"] for g in found["by_group"]["groups"]) == found["offline"]["users"]
    assert found["history"] == [] or found["history"][0]["actor"] == "system:ranking schedule"


async def test_an_empty_list_says_how_to_make_a_version(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    listed = await asyncio.to_thread(CliRunner().invoke, app, ["ranking", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith("no versions yet: `orchestrator ranking train` makes one")


def test_the_command_line_trains_lists_and_activates(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    runner = CliRunner()
    trained = runner.invoke(app, ["ranking", "train", "--data", str(SLICE)])
    assert trained.exit_code == 0, trained.output
    # (this test shares the database with others: its version number is not known)
    found = re.search(r"version (\d+): active \(ndcg@10 [0-9.]+ beats popularity", trained.output)
    assert found, trained.output
    listed = runner.invoke(app, ["ranking", "list"])
    assert f"v{found.group(1):<4} active" in listed.output
    missing = runner.invoke(app, ["ranking", "activate", "7"])
    assert missing.exit_code == 1
    assert "there is no version 7" in missing.output
    bad = runner.invoke(app, ["ranking", "train", "--data", "/nonexistent.csv"])
    assert bad.exit_code == 1
    assert "no such file" in bad.output


async def test_channels_get_ranked_content_from_the_active_version(
    engine: AsyncEngine, dataset: Dataset, tmp_path: Path
) -> None:
    config = WorkspaceConfig.model_validate(
        {
            "workspace": "t",
            "sources": [{"name": "s", "write_key": "wk_test_0123456789"}],
            "ranking": {"builtin": True, "deadline_ms": 2000},
        }
    )
    await load_items(
        engine,
        [CatalogItem(id=i.id, name=i.name, price=i.price) for i in dataset.items.values()],
    )
    async with httpx.AsyncClient() as http:
        deps = build_channel_deps(config, engine=engine, http=http, clock=lambda: datetime.now(UTC))
        assert deps.recommender is not None
        wanted = Recommendations(slot="home", k=4)
        before = await deps.recommender.recommend("u1", {}, wanted)
        assert before.source == "baseline"
        assert "no ranking model version is active" in before.reason

        await train(engine, dataset.purchases, dataset.items, source="slice", actor=command_line())
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                    " timestamp, received_at) VALUES ('o1', 'test', 'track', 'Order Completed',"
                    " 'u1', CAST(:props AS jsonb), now(), now())"
                ),
                {"props": orjson.dumps({"products": [{"product_id": "85123A"}]}).decode()},
            )
        deps.recommender.model.check_every = 0  # type: ignore[union-attr]
        unsure = await deps.recommender.recommend("u1", {}, wanted)
        # one purchase is too little to go on: the model says so, and popularity answers
        assert unsure.source == "baseline"
        assert "confidence 0.14 is under 0.2" in unsure.reason
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                    " timestamp, received_at) VALUES ('o2', 'test', 'track', 'Order Completed',"
                    " 'u1', CAST(:props AS jsonb), now(), now())"
                ),
                {"props": orjson.dumps({"products": [{"product_id": i} for i in
                                                     ("71053", "84406B", "22752")]}).decode()},
            )  # fmt: skip
        after = await deps.recommender.recommend("u1", {}, wanted)
    assert (after.source, after.model) == ("model", "hybrid-v1"), after.reason
    assert len(after.items) == 4
    assert all(item["name"] for item in after.items)
