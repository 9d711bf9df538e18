"""Ranked content: the model when it answers in time and sure enough, else the baseline.

The catalogue and popularity come from real Postgres; the external model is a real
HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.ranking import HttpRanker, Recommendations, Recommender
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
