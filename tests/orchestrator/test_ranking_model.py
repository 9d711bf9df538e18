"""The built-in model on a real slice of the UCI Online Retail data (tests/data)."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.ranking.evaluation import evaluate, split
from orchestrator.ranking.model import HybridModel, Popularity
from orchestrator.ranking.retail import Dataset, DatasetError, Item, Purchase, read_retail

SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"
CUTOFF = datetime(2011, 9, 1)  # noqa: DTZ001 (the dataset's times are naive)
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return read_retail(SLICE)


def test_the_slice_is_cleaned_as_the_dataset_readme_says(dataset: Dataset) -> None:
    assert dataset.rows == 29_658
    # customers, no cancellations, positive quantities and prices, product codes only
    assert dataset.kept == 28_900
    assert all(p.item[0].isdigit() for p in dataset.purchases)
    assert dataset.items["85123A"].name == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_the_model_beats_popularity_on_held_out_purchases(dataset: Dataset) -> None:
    held = split(dataset.purchases, CUTOFF)
    assert len(held.relevant) == 158
    popularity = Popularity(held.train, now=CUTOFF)
    model = HybridModel.train(held.train, dataset.items, now=CUTOFF)
    size = len(dataset.items)
    baseline = evaluate(
        "popularity", lambda u, k: popularity.recommend(u, k, held.history[u]), held, size
    )
    ours = evaluate("model", lambda u, k: model.recommend(held.history[u], k).items, held, size)
    assert ours.values["ndcg@10"] > 1.2 * baseline.values["ndcg@10"]
    assert ours.values["recall@10"] > baseline.values["recall@10"]
    assert ours.values["coverage@10"] > 5 * baseline.values["coverage@10"]


def test_cold_start_users_and_items_get_answers(dataset: Dataset) -> None:
    held = split(dataset.purchases, CUTOFF)
    # an item nobody has bought yet, named like one that sells
    items = {**dataset.items, "99999X": Item("99999X", "WHITE HANGING HEART T-LIGHT LANTERN", 3)}
    model = HybridModel.train([*held.train, Purchase("fan", "85123A", CUTOFF)], items, now=CUTOFF)

    stranger = model.recommend({}, 5)
    popular = Popularity(held.train, now=CUTOFF).recommend("never-seen", 5)
    assert stranger.items == popular
    assert stranger.confidence == 0

    answer = model.recommend({"85123A": CUTOFF}, 20)
    assert "99999X" in answer.items  # reached through its name alone
    assert "85123A" not in answer.items  # what the user bought is not offered again
    assert 0 < answer.confidence < 1
    regular = model.recommend(held.history[next(iter(held.relevant))], 10, exclude=["22423"])
    assert "22423" not in regular.items
    assert regular.confidence > answer.confidence
    assert regular.scores == sorted(regular.scores, reverse=True)


def test_evaluate_prints_the_three_models_side_by_side() -> None:
    result = runner.invoke(app, ["ranking", "evaluate", "--data", str(SLICE)])
    assert result.exit_code == 0, result.output
    assert "| metric | popularity | model | EASE |" in result.output
    for k in (5, 10, 20):
        for measure in ("precision", "recall", "ndcg", "hit_rate", "coverage"):
            assert f"| {measure}@{k} |" in result.output
    assert "x popularity" in result.output


def test_files_that_are_not_the_dataset_are_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "orders.csv"
    wrong.write_text("order,sku\n1,2\n")
    result = runner.invoke(app, ["ranking", "evaluate", "--data", str(wrong)])
    assert result.exit_code == 1
    assert "missing column(s) InvoiceNo, StockCode" in result.output
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as handle:
        handle.write(
            "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
            "1,22423,CAKE STAND,two,2011-01-01 10:00:00,12.75,12345\n"
        )
    with pytest.raises(DatasetError, match=r"bad.csv.gz:2: invalid literal"):
        read_retail(bad)
    late = runner.invoke(
        app, ["ranking", "evaluate", "--data", str(SLICE), "--cutoff", "2012-06-01"]
    )
    assert late.exit_code == 1
    assert "nothing to evaluate" in late.output
