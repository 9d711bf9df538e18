"""Choosing settings on validation, and the paired comparison, on the real retail slice."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.ranking.evaluation import Split, evaluate
from orchestrator.ranking.model import HybridModel, Popularity, Settings
from orchestrator.ranking.retail import Dataset, Purchase, read_retail
from orchestrator.ranking.tuning import (
    EASE,
    MODEL,
    VALIDATION_DAYS,
    Contender,
    TuningError,
    choose,
    held_out_split,
    paired,
    score,
    validation_split,
)

SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"
CUT = datetime(2011, 9, 1)  # noqa: DTZ001 (the dataset's times are naive)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return read_retail(SLICE)


def test_quantities_are_read_from_the_file(dataset: Dataset) -> None:
    with gzip.open(SLICE, "rt", encoding="utf-8", newline="") as handle:
        kept = [
            row
            for row in csv.DictReader(handle)
            if row["CustomerID"].strip()
            and row["StockCode"][:1].isdigit()
            and int(row["Quantity"]) > 0
            and float(row["UnitPrice"]) > 0
            and not row["InvoiceNo"].startswith(("C", "A"))
        ]
    assert [p.quantity for p in dataset.purchases] == [int(row["Quantity"]) for row in kept]
    assert len({p.quantity for p in dataset.purchases}) > 10  # not all ones
    assert Purchase("u", "i", CUT).quantity == 1  # stored events without one


def test_validation_precedes_the_cut_and_holds_no_test_purchase(dataset: Dataset) -> None:
    validation = validation_split(dataset.purchases, CUT)
    start = CUT - timedelta(days=VALIDATION_DAYS)
    assert validation.train
    assert validation.relevant
    assert max(p.at for p in validation.train) < start
    window: dict[str, set[str]] = {}
    for p in dataset.purchases:
        if start <= p.at < CUT:
            window.setdefault(p.user, set()).add(p.item)
    for user, items in validation.relevant.items():
        assert items <= window[user]
    # the test's relevant purchases (new to the user after the cut) appear nowhere in it
    test = held_out_split(dataset.purchases, CUT)
    only_after = {(u, i) for u, items in test.relevant.items() for i in items}
    assert only_after
    seen = {(p.user, p.item) for p in validation.train}
    seen |= {(u, i) for u, items in validation.relevant.items() for i in items}
    assert not seen & only_after


def test_empty_splits_are_refused_with_the_reason(dataset: Dataset) -> None:
    first = min(p.at for p in dataset.purchases)
    with pytest.raises(
        TuningError,
        match="no returning user bought anything new to them on or after the cut 2012-06-01",
    ):
        held_out_split(dataset.purchases, datetime(2012, 6, 1))  # noqa: DTZ001
    with pytest.raises(TuningError, match="no purchases before the cut"):
        held_out_split(dataset.purchases, first)
    early = first + timedelta(days=10)
    with pytest.raises(
        TuningError, match=r"validation is empty: no purchases before .* \(30 days before the cut"
    ):
        validation_split(dataset.purchases, early)
    quiet = [p for p in dataset.purchases if not CUT - timedelta(days=30) <= p.at < CUT]
    with pytest.raises(TuningError, match="validation is empty: no returning user"):
        validation_split(quiet, CUT)


def test_the_paired_interval_is_zero_for_one_model_and_excludes_zero_for_a_better_one(
    dataset: Dataset,
) -> None:
    test = held_out_split(dataset.purchases, CUT)
    size = len(dataset.items)
    model = HybridModel.train(test.train, dataset.items, now=CUT)
    ours = evaluate("model", lambda u, k: model.recommend(test.history[u], k).items, test, size)
    again = evaluate("again", lambda u, k: model.recommend(test.history[u], k).items, test, size)
    same = paired(ours, again)
    assert (same.relative, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.users == len(test.relevant)
    assert same.resamples == 2000

    popularity = Popularity(test.train, now=CUT)
    baseline = evaluate(
        "popularity", lambda u, k: popularity.recommend(u, k, test.history[u]), test, size
    )
    better = paired(ours, baseline)
    assert 0 < better.low < better.relative < better.high
    assert better.relative == pytest.approx(ours.values["ndcg@10"] / baseline.values["ndcg@10"] - 1)
    worse = paired(baseline, ours)
    assert worse.low < worse.high < 0
    assert paired(ours, baseline, seed=1) != paired(ours, baseline, seed=2)  # seeded draws
    assert paired(ours, baseline, seed=1) == paired(ours, baseline, seed=1)

    five = Split(test.train, test.history, dict(list(test.relevant.items())[:5]), 0)
    fewer = evaluate("fewer", lambda u, k: [], five, size)
    with pytest.raises(TuningError, match="not scored on the same users"):
        paired(ours, fewer)


def test_choosing_keeps_the_best_validation_setting_of_each_axis(dataset: Dataset) -> None:
    validation = validation_split(dataset.purchases, CUT)
    start = CUT - timedelta(days=VALIDATION_DAYS)
    choice = choose(EASE, validation, dataset.items, now=start)
    tried = dict((s["regularisation"], v) for s, v in choice.tried)
    assert sorted(tried) == sorted(EASE.grid["regularisation"])
    assert choice.score == max(tried.values()) == tried[choice.settings["regularisation"]]
    # retrained with the choice, the same model scores the same on the same split
    again = score(EASE, validation, dataset.items, now=start, settings=choice.settings)
    assert again.values["ndcg@10"] == choice.score

    small = Contender(
        "model", MODEL.start, {"ease_weight": (0.0, 1.0), "popularity_weight": (0.0, 1.0)},
        MODEL.build,
    )  # fmt: skip
    picked = choose(small, validation, dataset.items, now=start)
    assert len(picked.tried) == 5  # the start, 0 and 1; then 0 and 1 for popularity
    first = {s["ease_weight"]: v for s, v in picked.tried[:3]}
    assert picked.settings["ease_weight"] == max(first, key=lambda w: first[w])
    # the second axis is searched from the first's best
    assert [s["ease_weight"] for s, _ in picked.tried[3:]] == [picked.settings["ease_weight"]] * 2
    assert picked.score == max(v for _, v in picked.tried)


def test_versions_stored_before_the_ease_settings_still_load(dataset: Dataset) -> None:
    model = HybridModel.train(dataset.purchases[:5000], dataset.items, now=CUT)
    with np.load(io.BytesIO(model.dump())) as arrays:
        stored = {name: arrays[name] for name in arrays.files}
    meta = json.loads(str(stored["meta"]))
    for name in ("ease_weight", "ease_regularisation", "ease_max_items"):
        del meta["settings"][name]
    stored["meta"] = np.array(json.dumps(meta))
    old = io.BytesIO()
    np.savez_compressed(old, **stored)
    loaded = HybridModel.load(old.getvalue())
    assert loaded.settings == Settings()
    history = {p.item: p.at for p in dataset.purchases[:20]}
    assert loaded.recommend(history, 10).items == model.recommend(history, 10).items


def test_the_ease_part_changes_the_neighbours_and_is_skipped_for_big_catalogues(
    dataset: Dataset,
) -> None:
    train = [p for p in dataset.purchases if p.at < CUT]
    without = HybridModel.train(train, dataset.items, now=CUT, settings=Settings(ease_weight=0))
    capped = HybridModel.train(train, dataset.items, now=CUT, settings=Settings(ease_max_items=10))
    default = HybridModel.train(train, dataset.items, now=CUT)
    assert np.array_equal(capped.weights, without.weights)
    assert not np.array_equal(default.weights, without.weights)
