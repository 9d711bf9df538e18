"""`POST /v1/rank` through the real API, served by the built-in model's active version."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.ranking.retail import read_retail
from orchestrator.ranking.versions import train
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.workspace import NOOP, SERVER_KEY

BACKEND = {"authorization": f"Bearer {SERVER_KEY}"}

SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"


async def test_rank_answers_from_the_model_or_says_why_not(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    dataset = read_retail(SLICE)
    await load_items(
        engine, [CatalogItem(id=i.id, name=i.name, price=i.price) for i in dataset.items.values()]
    )
    await train(engine, dataset.purchases, dataset.items, source="slice", actor=command_line())
    stack = await make_stack(
        {"noop": NOOP}, workspace={"config": "ranking:\n  builtin: true\n  deadline_ms: 2000\n"}
    )
    bought = ["85123A", "71053", "84406B", "22752"]
    await stack.track("ada", "Order Completed", {"products": [{"product_id": i} for i in bought]})
    await stack.identify("grace", {"personalization": False})

    async def rank(body: dict[str, object]) -> dict[str, object]:
        response = await stack.call("POST", "/v1/rank", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, object] = response.json()
        return answer

    ada = await rank({"user_id": "ada", "slot": "home", "k": 5, "exclude_purchased": True})
    assert (ada["source"], ada["model"]) == ("model", "hybrid-v1")
    items = ada["items"]
    assert isinstance(items, list)
    assert len(items) == 5
    assert not {item["id"] for item in items} & set(bought)

    stranger = await rank({"user_id": "nobody", "slot": "home"})
    assert stranger["source"] == "baseline"
    assert "confidence 0.00 is under 0.2" in str(stranger["reason"])
    grace = await rank({"user_id": "grace", "slot": "home"})
    assert grace["reason"] == "the user opted out of personalisation"

    bad = await stack.call("POST", "/v1/rank", json={"user_id": "ada", "slot": "home", "k": 0})
    assert bad.status_code == 400
    assert bad.json()["field"] == "k"
    no_slot = await stack.call("POST", "/v1/rank", json={"user_id": "ada"})
    assert no_slot.json()["field"] == "slot"
    anonymous = await stack.http.post(
        f"{stack.api_url}/v1/rank", json={"user_id": "a", "slot": "s"}
    )
    assert anonymous.status_code == 401


async def test_the_catalogue_loads_over_the_api_all_or_nothing(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"noop": NOOP})
    items = [
        {"id": "A1", "name": "Anorak", "price": 80, "url": "https://shop.example.com/A1",
         "attributes": {"colour": "red"}},
        {"id": "B2", "name": "Boots", "category": "footwear"},
    ]  # fmt: skip
    loaded = await stack.http.put(
        f"{stack.api_url}/v1/catalog/items", json={"items": items}, headers=BACKEND
    )
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"loaded": 2}
    bad = await stack.http.put(
        f"{stack.api_url}/v1/catalog/items",
        json={"items": [{"id": "C3", "name": "Cap"}, {"id": "D4", "name": "", "price": 3}]},
        headers=BACKEND,
    )
    assert bad.status_code == 400
    assert bad.json()["field"] == "items[1].name"
    typo = await stack.http.put(
        f"{stack.api_url}/v1/catalog/items",
        json={"items": [{"id": "E5", "name": "Scarf", "colour": "red"}]},
        headers=BACKEND,
    )
    assert (typo.status_code, typo.json()["field"]) == (400, "items[0].colour")
    stored = await rows(engine, "SELECT id, name, attributes FROM catalog_items ORDER BY id")
    assert stored == [
        {"id": "A1", "name": "Anorak", "attributes": {"colour": "red"}},
        {"id": "B2", "name": "Boots", "attributes": {}},
    ]
    anonymous = await stack.http.put(f"{stack.api_url}/v1/catalog/items", json={"items": items})
    assert anonymous.status_code == 401
