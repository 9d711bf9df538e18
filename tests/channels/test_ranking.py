"""Ranked content: the model when it answers in time and sure enough, else the baseline.

The catalogue and popularity come from real Postgres; the external model is a real
HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.ranking import (
    EXPLORATION_POOL,
    HttpRanker,
    Recommendations,
    Recommender,
    ScoredItem,
    explore,
)
from orchestrator.catalog import CatalogCache, CatalogFileError, load_items, read_items
from tests.support.db import count
from tests.support.model import ModelServer, running_model

CATALOG = """id,name,category,price,url,colour
A,Anorak,outerwear,80,https://shop.example.com/A,red
B,Boots,footwear,120,https://shop.example.com/B,brown
C,Cap,accessories,15,,blue
D,Daypack,packs,45,https://shop.example.com/D,
E,Envelope bag,packs,10,https://shop.example.com/E,
"""
NOW = datetime.now(UTC)


async def purchase(engine: AsyncEngine, user: str, items: list[str], *, days_ago: int = 1) -> None:
    products = [{"product_id": i, "price": 10} for i in items]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            {
                "id": f"{user}-{'-'.join(items)}-{days_ago}",
                "user": user,
                "props": orjson.dumps({"products": products}).decode(),
                "at": NOW - timedelta(days=days_ago),
            },
        )


@pytest.fixture
async def catalog(engine: AsyncEngine, tmp_path: Path) -> CatalogCache:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG)
    assert await load_items(engine, read_items(path)) == 5
    # B bought three times, D twice, A once (and an old purchase of E outside the window)
    await purchase(engine, "u1", ["B", "D"])
    await purchase(engine, "u2", ["B", "D"])
    await purchase(engine, "u3", ["B", "A"])
    await purchase(engine, "u4", ["E"], days_ago=90)
    return CatalogCache(
        engine,
        events=["Order Completed"],
        window=timedelta(days=30),
        refresh_every=timedelta(minutes=5),
    )


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    async with running_model() as server:
        yield server


def recommender(catalog: CatalogCache, model: ModelServer | None, http: httpx.AsyncClient,
                deadline: float = 0.5) -> Recommender:  # fmt: skip
    ranker = HttpRanker(url=model.url, client=http, timeout=deadline) if model else None
    return Recommender(catalog=catalog, model=ranker, deadline=deadline, min_confidence=0.3)


WANT = Recommendations(slot="cart_upsell", k=3)


async def test_the_baseline_is_recent_popularity_with_catalogue_details(
    catalog: CatalogCache,
) -> None:
    async with httpx.AsyncClient() as http:
        filled = await recommender(catalog, None, http).recommend("u9", {}, WANT)
    assert filled.source == "baseline"
    assert filled.reason == "no ranking model is configured"
    assert [i["id"] for i in filled.items] == ["B", "D", "A"]
    assert filled.items[0] == {
        "id": "B", "name": "Boots", "url": "https://shop.example.com/B", "image": None,
        "price": 120.0, "category": "footwear", "description": None, "colour": "brown",
    }  # fmt: skip
    assert filled.record()["items"] == ["B", "D", "A"]


async def test_the_model_answer_is_used_without_what_the_user_bought(
    catalog: CatalogCache, model: ModelServer
) -> None:
    model.items = ["D", "C", "ZZ-unknown", "B"]
    want = Recommendations(slot="cart_upsell", k=3, exclude_purchased=True)
    async with httpx.AsyncClient() as http:
        filled = await recommender(catalog, model, http).recommend(
            "u1", {"first_name": "Ada"}, want, context={"event": {"name": "Cart Abandoned"}}
        )
    # u1 bought B and D: the model is told, and they are left out; the unknown item is
    # dropped and the slot topped up with the most popular item left (A).
    assert model.requests[0]["exclude"] == ["B", "D"]
    assert model.requests[0]["slot"] == "cart_upsell"
    assert model.requests[0]["context"] == {"event": {"name": "Cart Abandoned"}}
    assert (filled.source, filled.model, filled.confidence) == ("model", "test-v1", 0.9)
    assert [i["id"] for i in filled.items] == ["C", "A", "E"]
    assert "popular item(s) added" in filled.reason


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"delay": 5.0}, "did not answer within 50 ms"),
        ({"status": 500}, "answered 500"),
        ({"body": {"unexpected": True}}, "not a ranking"),
        ({"confidence": 0.1}, "confidence 0.10 is under 0.3"),
    ],
)
async def test_timeouts_errors_and_low_confidence_fall_back_to_the_baseline(
    catalog: CatalogCache, model: ModelServer, script: dict[str, object], reason: str
) -> None:
    model.items = ["C", "E"]
    for key, value in script.items():
        setattr(model, key, value)
    async with httpx.AsyncClient() as http:
        started = time.monotonic()
        filled = await recommender(catalog, model, http, deadline=0.05).recommend("u9", {}, WANT)
        elapsed = time.monotonic() - started
    assert filled.source == "baseline"
    assert reason in filled.reason
    assert [i["id"] for i in filled.items] == ["B", "D", "A"]
    assert len(model.requests) == 1
    # the slow model's answer (5 s away) was not waited for
    assert elapsed < 5.0


async def test_a_user_who_opted_out_of_personalisation_gets_the_baseline_unasked(
    catalog: CatalogCache, model: ModelServer
) -> None:
    model.items = ["C", "E"]
    async with httpx.AsyncClient() as http:
        filled = await recommender(catalog, model, http).recommend(
            "u9", {"personalization": False}, WANT
        )
    assert (filled.source, filled.reason) == ("baseline", "the user opted out of personalisation")
    assert model.requests == []


async def test_a_bad_catalogue_file_names_the_line_and_loads_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("id,name,price\nA,Anorak,80\nB,,12\n")
    with pytest.raises(CatalogFileError, match=r"catalog.csv:3: name: String should have"):
        read_items(path)
    path.write_text("id,name,price\nA,Anorak,80\nA,Again,-1\n")
    with pytest.raises(CatalogFileError, match=r"catalog.csv:3: price"):
        read_items(path)
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"id": "A", "name": "Anorak"}\n{"id": "B", "name": "Boots"\n')
    with pytest.raises(CatalogFileError, match=r"items.jsonl:2: not JSON"):
        read_items(jsonl)
    assert await count(engine, "catalog_items") == 0


async def test_the_model_is_used_again_after_a_burst_of_missed_deadlines(
    catalog: CatalogCache, model: ModelServer
) -> None:
    """Requests that missed the deadline are abandoned, not cancelled mid-flight (which
    can leave httpx's pool holding dead connections and the model unreachable)."""
    model.items = ["C", "E"]
    model.delay = 0.2
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(limits=limits) as http:
        slow = recommender(catalog, model, http, deadline=0.05)
        missed = await asyncio.gather(*(slow.recommend(f"u{n}", {}, WANT) for n in range(40)))
        assert {f.source for f in missed} == {"baseline"}
        model.delay = 0.0
        await asyncio.sleep(0.5)
        # a generous deadline: only a pool still holding dead connections fails now
        patient = recommender(catalog, model, http, deadline=1.0)
        again = await patient.recommend("u9", {}, WANT)
    assert (again.source, [i["id"] for i in again.items][:2]) == ("model", ["C", "E"]), again.reason


def scored(*ids: str) -> list[ScoredItem]:
    return [ScoredItem(item_id=i, score=1.0 - n / 10) for n, i in enumerate(ids)]


@pytest.mark.parametrize(
    ("ranked", "pool", "rate", "explorable"),
    [
        (("A", "B", "C"), ("D", "E", "F"), 0.0, []),  # exploration off
        (("A", "B", "C"), (), 0.5, []),  # nothing to explore with
        (("A", "B", "C"), ("D", "E", "F"), 0.5, [1, 2]),  # never the top position
        (("A", "B", "C", "D"), ("E",), 0.3, [1]),  # not past the pool's size
    ],
)
def test_exploration_swaps_positions_after_the_first_and_logs_their_chances(
    ranked: tuple[str, ...], pool: tuple[str, ...], rate: float, explorable: list[int]
) -> None:
    for seed in range(200):
        shown = explore(scored(*ranked), scored(*pool), rate=rate, rng=random.Random(seed))
        assert [s.position for s in shown] == list(range(len(ranked)))
        assert len({s.item_id for s in shown}) == len(ranked)
        for s in shown:
            if s.position not in explorable:
                assert (s.item_id, s.propensity, s.explored) == (ranked[s.position], 1.0, False)
            elif s.explored:
                assert s.item_id in pool
                assert s.replaced == ranked[s.position]
                assert s.propensity == pytest.approx(rate / len(pool))
            else:
                assert (s.item_id, s.propensity) == (ranked[s.position], 1 - rate)


def test_the_logged_propensities_are_how_often_each_item_lands_at_each_position() -> None:
    ranked, pool, rate, draws = scored("A", "B", "C"), scored("D", "E", "F", "G"), 0.3, 20_000
    seen: Counter[tuple[str, int]] = Counter()
    logged: dict[tuple[str, int], float] = {}
    for seed in range(draws):
        for s in explore(ranked, pool, rate=rate, rng=random.Random(seed)):
            seen[s.item_id, s.position] += 1
            logged[s.item_id, s.position] = s.propensity
    assert set(seen) == {("A", 0), *((i, p) for i in "BCDEFG" for p in (1, 2))} - {
        ("C", 1),
        ("B", 2),
    }
    for key, n in seen.items():
        share, chance = n / draws, logged[key]
        # within four standard errors of the logged chance (fixed seeds: no flakiness)
        assert abs(share - chance) < 4 * (chance * (1 - chance) / draws) ** 0.5 + 1e-9, key


async def test_exploring_shows_lower_ranked_items_the_same_way_for_the_same_message(
    catalog: CatalogCache, model: ModelServer
) -> None:
    model.items = ["C", "E", "A", "B", "D"]
    want = Recommendations(slot="cart_upsell", k=2)
    async with httpx.AsyncClient() as http:
        ranker = HttpRanker(url=model.url, client=http, timeout=0.5)
        exploring = Recommender(catalog=catalog, model=ranker, deadline=0.5, exploration=0.5)
        fills = [
            await exploring.recommend("u9", {}, want, message_id=f"msg-{n % 20}") for n in range(40)
        ]
    # the model is asked for more than k, to explore among what it ranks lower
    assert {r["k"] for r in model.requests} == {2 + EXPLORATION_POOL}
    # a retry (the same message id) shows the same items, in the same order
    assert [f.record() for f in fills[:20]] == [f.record() for f in fills[20:]]
    records = [f.record() for f in fills[:20]]
    assert all(r["items"][0] == "C" for r in records)  # the top item stays
    explored = [r["shown"][1] for r in records if r["shown"][1]["explored"]]
    assert 0 < len(explored) < 20
    for record in records:
        assert record["exploration"] == 0.5
        assert record["pool"] == ["A", "B", "D"]
        assert record["items"] == [s["item_id"] for s in record["shown"]]
        top, second = record["shown"]
        assert top == {"item_id": "C", "position": 0, "score": 1.0, "propensity": 1.0,
                       "explored": False}  # fmt: skip
        if second["explored"]:
            assert second["item_id"] in "ABD"
            assert (second["replaced"], second["propensity"]) == ("E", pytest.approx(0.5 / 3))
        else:
            assert (second["item_id"], second["propensity"]) == ("E", 0.5)
    # shown items are the catalogue's, with their details
    assert {i["id"]: i["name"] for i in fills[0].items}["C"] == "Cap"


async def test_exploration_draws_from_the_catalogue_when_the_model_ranks_no_more(
    catalog: CatalogCache, model: ModelServer
) -> None:
    model.items = ["C", "E"]
    want = Recommendations(slot="cart_upsell", k=2)
    async with httpx.AsyncClient() as http:
        ranker = HttpRanker(url=model.url, client=http, timeout=0.5)
        exploring = Recommender(catalog=catalog, model=ranker, deadline=0.5, exploration=0.5)
        records = [
            (await exploring.recommend("u9", {}, want, message_id=f"m{n}")).record()
            for n in range(30)
        ]
        # an answer that is not a message (POST /v1/rank) is not logged, so never explores
        answers = [
            (await exploring.recommend("u9", {}, want, context={"event": {"n": n}})).record()
            for n in range(10)
        ]
    # the popular items not shown (B, D, A by popularity) are the pool
    assert {tuple(r["pool"]) for r in records} == {("B", "D", "A")}
    assert {r["shown"][1]["item_id"] for r in records} == {"E", "B", "D", "A"}
    assert {tuple(s["item_id"] for s in a["shown"]) for a in answers} == {("C", "E")}
    assert {a["exploration"] for a in answers} == {0.0}


async def test_the_baseline_logs_its_items_as_certain_and_exploration_is_bounded(
    catalog: CatalogCache,
) -> None:
    async with httpx.AsyncClient() as http:
        record = (await recommender(catalog, None, http).recommend("u9", {}, WANT)).record()
    assert record["exploration"] == 0.0
    assert [(s["item_id"], s["position"], s["propensity"]) for s in record["shown"]] == [
        ("B", 0, 1.0), ("D", 1, 1.0), ("A", 2, 1.0)
    ]  # fmt: skip
    assert record["shown"][0]["score"] == 1.0  # the most popular
    with pytest.raises(ValueError, match=r"at most 0\.5"):
        Recommender(catalog=catalog, exploration=0.6)
