"""The diversity stage: MMR and per-category limits, configured per slot and applied by
the real Recommender (catalogue in Postgres, the model a real HTTP server on loopback)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.ranking import Filled, Recommendations, Recommender
from orchestrator.catalog import load_items, read_items
from orchestrator.ranking.diversity import Diversifier, candidates_for, select
from orchestrator.sources import InvalidSource
from orchestrator.worker import build_channel_deps
from orchestrator.workspace import WorkspaceConfig, load_workspace
from tests.support.model import ModelServer, running_model
from tests.support.workspace import write_workspace

CATALOG = """id,name,category,price
M1,Mug one,mugs,5
M2,Mug two,mugs,5
M3,Mug three,mugs,5
M4,Mug four,mugs,5
B1,Bag one,bags,9
B2,Bag two,bags,9
B3,Bag three,bags,9
C1,Card one,cards,2
C2,Card two,cards,2
U1,Gift voucher,,20
"""
CATEGORY = {"M": "mugs", "B": "bags", "C": "cards", "U": None}
# The model's order: every mug first, then bags, cards, and the uncategorised voucher.
RANKED = ["M1", "M2", "M3", "M4", "B1", "B2", "C1", "B3", "C2", "U1"]
NOW = datetime.now(UTC)


def categories(items: list[str]) -> list[str | None]:
    return [CATEGORY[i[0]] for i in items]


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    async with running_model() as server:
        server.items = RANKED
        yield server


@pytest.fixture
async def stocked(engine: AsyncEngine, tmp_path: Path) -> AsyncEngine:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG)
    assert await load_items(engine, read_items(path)) == 10
    # Popular: M3 (two buyers), then M2 and B1.
    for user, items in {"u1": ["M2", "M3"], "u2": ["M3", "B1"]}.items():
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                    " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                    " :user, CAST(:props AS jsonb), :at, :at)"
                ),
                {"id": f"order-{user}", "user": user, "at": NOW - timedelta(days=1),
                 "props": orjson.dumps({"products": [{"product_id": i} for i in items]}).decode()},
            )  # fmt: skip
    return engine


def configured(model: ModelServer, slots: dict[str, object]) -> WorkspaceConfig:
    return WorkspaceConfig.model_validate(
        {
            "workspace": "t",
            "sources": [{"name": "s", "write_key": "wk_test_0123456789"}],
            "ranking": {"url": model.url, "deadline_ms": 2000, "slots": slots},
        }
    )


async def fill(
    engine: AsyncEngine,
    config: WorkspaceConfig,
    slot: str,
    *,
    k: int = 4,
    traits: dict[str, object] | None = None,
) -> Filled:
    """Through the worker's own wiring: the recommender its channels use."""
    async with httpx.AsyncClient() as http:
        deps = build_channel_deps(config, engine=engine, http=http, clock=lambda: NOW)
        assert isinstance(deps.recommender, Recommender)
        return await deps.recommender.recommend(
            "someone", traits or {}, Recommendations(slot=slot, k=k)
        )


def ids(filled: Filled) -> list[str]:
    return [item["id"] for item in filled.items]


async def test_a_per_category_limit_holds_in_the_slot_it_is_configured_for(
    stocked: AsyncEngine, model: ModelServer
) -> None:
    config = configured(model, {"cart_upsell": {"diversity": {"per_category": 2}}})
    plain = await fill(stocked, config, "home")
    assert ids(plain) == ["M1", "M2", "M3", "M4"]
    assert "diversity" not in plain.record()
    assert model.requests[-1]["k"] == 4

    limited = await fill(stocked, config, "cart_upsell")
    assert ids(limited) == ["M1", "M2", "B1", "B2"]
    assert max(Counter(i["category"] for i in limited.items).values()) == 2
    # The stage chose from more of the model's items, and the log says what acted.
    assert model.requests[-1]["k"] == candidates_for(4)
    assert limited.source == "model"
    assert limited.record()["diversity"] == {"mmr_lambda": 1.0, "per_category": 2}
    assert (
        limited.reason
        == "ranked by the model, re-ranked for diversity (mmr_lambda 1.0, per_category 2)"
    )
    assert [s.position for s in limited.shown] == [0, 1, 2, 3]


async def test_mmr_with_a_low_lambda_spreads_categories(
    stocked: AsyncEngine, model: ModelServer
) -> None:
    config = configured(model, {"cart_upsell": {"diversity": {"mmr_lambda": 0.3}}})
    spread = await fill(stocked, config, "cart_upsell")
    assert ids(spread)[0] == "M1"  # the model's best stays first
    assert len({i["category"] for i in spread.items}) == 4  # mugs, bags, cards, none
    assert ids(spread) == ["M1", "B1", "C1", "U1"]
    mild = configured(model, {"cart_upsell": {"diversity": {"mmr_lambda": 0.8}}})
    # At 0.8 relevance weighs more: mugs stay, with the best bag among them
    assert ids(await fill(stocked, mild, "cart_upsell")) == ["M1", "M2", "B1", "M3"]


async def test_popular_items_that_top_up_a_slot_keep_its_limit(
    stocked: AsyncEngine, model: ModelServer
) -> None:
    model.items = ["M1", "M2", "M3"]  # the model knows only mugs
    config = configured(model, {"cart_upsell": {"diversity": {"per_category": 1}}})
    filled = await fill(stocked, config, "cart_upsell", k=3)
    # M1 from the model; then the most popular non-mugs (B1, then by id: C1)
    assert ids(filled) == ["M1", "B1", "C1"]
    assert "2 popular item(s) added, re-ranked for diversity (mmr_lambda 1.0, per_category 1)" in (
        filled.reason
    )


async def test_users_who_opted_out_get_the_baseline_in_a_diversity_slot(
    stocked: AsyncEngine, model: ModelServer
) -> None:
    config = configured(
        model, {"cart_upsell": {"diversity": {"mmr_lambda": 0.3, "per_category": 1}}}
    )
    filled = await fill(stocked, config, "cart_upsell", traits={"personalization": False})
    assert (filled.source, filled.reason) == ("baseline", "the user opted out of personalisation")
    assert ids(filled) == ["M3", "B1", "M2", "B2"]  # popularity, not diversified
    assert "diversity" not in filled.record()
    assert model.requests == []


@pytest.mark.parametrize(
    ("mmr_lambda", "per_category", "expected"),
    [
        (1.0, None, RANKED[:5]),
        (1.0, 1, ["M1", "B1", "C1", "U1"]),
        (1.0, 3, ["M1", "M2", "M3", "B1", "B2"]),
        (0.3, None, ["M1", "B1", "C1", "U1", "M2"]),
    ],
)
def test_select_re_ranks_as_configured(
    mmr_lambda: float, per_category: int | None, expected: list[str]
) -> None:
    scores = [1 - n / 100 for n in range(len(RANKED))]
    cats = dict(zip(RANKED, categories(RANKED), strict=True))
    chosen = select(RANKED, scores, 5, mmr_lambda=mmr_lambda, per_category=per_category,
                    categories=cats)  # fmt: skip
    assert chosen == expected


def test_items_already_chosen_count_towards_the_limit() -> None:
    cats = dict(zip(RANKED, categories(RANKED), strict=True))
    assert select(["M2", "B1", "C1"], [3, 2, 1], 2, per_category=1, categories=cats,
                  chosen=["M1"]) == ["B1", "C1"]  # fmt: skip
    with pytest.raises(ValueError, match=r"mmr_lambda must be in \(0, 1\]"):
        Diversifier(mmr_lambda=0)
    with pytest.raises(ValueError, match="per_category must be at least 1"):
        Diversifier(per_category=0)


def test_bad_diversity_settings_are_refused_at_their_place(tmp_path: Path) -> None:
    root = write_workspace(
        tmp_path, receiver_url="http://127.0.0.1:1", journeys={},
        config=(
            "ranking:\n"
            "  slots:\n"
            "    cart_upsell:\n"
            "      diversity: {mmr_lambda: 0, per_category: 0, mmr: 0.5}\n"
            "    home:\n"
            "      diversity: {}\n"
            "    Bad-Slot:\n"
            "      diversity: {per_category: 2}\n"
        ),
    )  # fmt: skip
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    lines = (root / "orchestrator.yaml").read_text().splitlines()
    at = {key: lines.index(line) + 1 for key, line in (
        ("upsell", "      diversity: {mmr_lambda: 0, per_category: 0, mmr: 0.5}"),
        ("home", "      diversity: {}"),
        ("bad", "    Bad-Slot:"),
    )}  # fmt: skip
    path = "ranking.slots.cart_upsell.diversity"
    assert [str(p) for p in caught.value.problems] == [
        f"orchestrator.yaml:{at['upsell']}:31: {path}.mmr_lambda: Input should be greater than 0",
        f"orchestrator.yaml:{at['upsell']}:48: {path}.per_category: Input should be greater "
        "than or equal to 1",
        f"orchestrator.yaml:{at['upsell']}:51: {path}.mmr: unknown key",
        f"orchestrator.yaml:{at['home']}:7: ranking.slots.home.diversity: give `mmr_lambda` "
        "under 1, `per_category`, or both",
        f"orchestrator.yaml:{at['bad']}:5: ranking.slots.Bad-Slot.[key]: String should match "
        "pattern '^[a-z][a-z0-9_]*$'",
    ]
