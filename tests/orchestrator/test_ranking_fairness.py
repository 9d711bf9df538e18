"""Metrics by group and beyond accuracy, on the committed slice of UCI Online Retail."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.ranking.beyond_accuracy import ItemSpace, gini
from orchestrator.ranking.evaluation import Metrics, Split, evaluate, split, table
from orchestrator.ranking.fairness import OTHER, band_labels, by_group, holm, parse_bands
from orchestrator.ranking.model import HybridModel, Popularity
from orchestrator.ranking.retail import Dataset, read_retail

SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"
CUTOFF = datetime(2011, 9, 1)  # noqa: DTZ001 (the dataset's times are naive)
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return read_retail(SLICE)


@pytest.fixture(scope="module")
def held(dataset: Dataset) -> Split:
    return split(dataset.purchases, CUTOFF)


@pytest.fixture(scope="module")
def model(dataset: Dataset, held: Split) -> HybridModel:
    return HybridModel.train(held.train, dataset.items, now=CUTOFF)


@pytest.fixture(scope="module")
def space(dataset: Dataset) -> ItemSpace:
    return ItemSpace(dataset.items)


@pytest.fixture(scope="module")
def scored(dataset: Dataset, held: Split, model: HybridModel, space: ItemSpace) -> Metrics:
    return evaluate("model", lambda u, k: model.recommend(held.history[u], k).items, held,
                    len(dataset.items), space=space)  # fmt: skip


def countries(dataset: Dataset) -> dict[str, str | None]:
    return {user: found.get("Country") for user, found in dataset.customers.items()}


def test_each_customer_keeps_their_most_common_country(dataset: Dataset) -> None:
    assert len(dataset.customers) == 358
    assert dataset.customers["13047"] == {"Country": "United Kingdom"}
    assert sum(c["Country"] == "France" for c in dataset.customers.values()) == 6


def test_the_model_by_country_has_every_metric_with_an_interval(
    dataset: Dataset, scored: Metrics
) -> None:
    metrics = ["ndcg@10", "precision@10", "recall@10", "hit_rate@10", "diversity@10"]
    report = by_group(scored.users, countries(dataset), metrics=metrics, min_users=10)
    assert [(g.name, g.users) for g in report.groups] == [("United Kingdom", 136), (OTHER, 22)]
    other = report.groups[1]
    assert "France" in other.folded
    assert "United Kingdom" not in other.folded
    for group in report.groups:
        assert group.tested
        for name in metrics:
            metric = group.metrics[name]
            assert metric.low <= metric.mean <= metric.high
            assert metric.low < metric.high
            assert metric.rest is not None
            assert metric.p_value is not None
    uk = report.groups[0].metrics["ndcg@10"]
    mean = sum(scored.users[u]["ndcg@10"] for u in scored.users
               if dataset.customers[u]["Country"] == "United Kingdom") / 136  # fmt: skip
    assert uk.mean == pytest.approx(mean)
    # The same model for everyone: nobody is flagged.
    assert report.flagged == []
    # With the default 30 users, "other" is reported but too small to compare.
    default = by_group(scored.users, countries(dataset), metrics=metrics)
    assert [(g.name, g.tested) for g in default.groups] == [
        ("United Kingdom", True), (OTHER, False)
    ]  # fmt: skip
    assert default.groups[1].metrics["ndcg@10"].p_value is None


def test_a_country_served_popularity_only_is_flagged(
    dataset: Dataset, held: Split, model: HybridModel
) -> None:
    popularity = Popularity(held.train, now=CUTOFF)
    country = countries(dataset)

    def unfair(user: str, k: int) -> list[str]:
        if country[user] == "United Kingdom":
            return popularity.recommend(user, k, held.history[user])
        return model.recommend(held.history[user], k).items

    served = evaluate("unfair", unfair, held, len(dataset.items))
    report = by_group(served.users, country, metrics=["ndcg@10", "precision@10"], min_users=10)
    assert ("United Kingdom", "ndcg@10") in report.flagged
    assert all(group == "United Kingdom" for group, _ in report.flagged)
    uk = report.groups[0].metrics["ndcg@10"]
    assert uk.worse
    assert uk.gap is not None
    assert uk.gap <= -0.2
    assert uk.p_value is not None
    assert uk.p_value < 0.05
    # A gap demanded larger than the one found flags nothing.
    strict = by_group(served.users, country, metrics=["ndcg@10"], min_users=10, gap=0.9)
    assert strict.flagged == []


def test_an_identical_quality_split_flags_nobody(scored: Metrics) -> None:
    halves = {u: "even" if hashlib.sha256(u.encode()).digest()[0] % 2 else "odd"
              for u in scored.users}  # fmt: skip
    report = by_group(scored.users, halves, min_users=30)
    assert {g.name for g in report.groups} == {"even", "odd"}
    assert all(g.tested for g in report.groups)
    assert report.flagged == []
    assert "ndcg@10" in report.metrics
    assert "novelty@10" in report.metrics


@pytest.mark.parametrize(
    ("edges", "labels"),
    [
        ([25, 35, 50, 65], ["<25", "25-34", "35-49", "50-64", "65+"]),
        ([2.5, 5], ["<2.5", "[2.5, 5)", "5+"]),
    ],
)
def test_numeric_traits_are_grouped_in_bands(edges: list[float], labels: list[str]) -> None:
    assert band_labels(edges) == labels


def test_bands_group_ages_and_leave_out_what_is_not_a_number() -> None:
    ages: dict[str, object] = {f"u{n}": 18 + n % 60 for n in range(300)}
    ages.update({"u0": "unknown", "u1": None, "u2": True})
    values = {u: {"click_rate": 0.1 if n % 3 else 0.0} for n, u in enumerate(ages)}
    values["no-traits"] = {"click_rate": 0.5}
    report = by_group(values, ages, bands=[25, 35, 50, 65], min_users=30)
    assert report.ungrouped == 4
    sizes = {g.name: g.users for g in report.groups}
    # five users of each age from 18 to 77; three of the youngest have no number
    assert sizes == {"<25": 32, "25-34": 50, "35-49": 75, "50-64": 75, "65+": 65}
    assert report.flagged == []
    # Small bands are folded into "other"
    folded = by_group(values, ages, bands=[25, 35, 50, 65], min_users=55)
    assert [(g.name, g.users) for g in folded.groups] == [
        ("35-49", 75), ("50-64", 75), ("65+", 65), (OTHER, 82)
    ]  # fmt: skip
    assert folded.groups[-1].folded == ("25-34", "<25")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        band_labels([35, 25])
    with pytest.raises(ValueError, match="not increasing numbers"):
        parse_bands("25,thirty")
    with pytest.raises(ValueError, match="gap"):
        by_group({}, {}, gap=20)


def test_holm_steps_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_beyond_accuracy_measures_tell_popularity_from_the_model(
    dataset: Dataset, held: Split, scored: Metrics, space: ItemSpace
) -> None:
    popularity = Popularity(held.train, now=CUTOFF)
    baseline = evaluate("popularity", lambda u, k: popularity.recommend(u, k, held.history[u]),
                        held, len(dataset.items), space=space)  # fmt: skip
    # popularity recommends the same few items to everyone, and well-known ones
    assert baseline.values["gini@10"] > scored.values["gini@10"]
    assert baseline.values["novelty@10"] < scored.values["novelty@10"]
    assert 0 < scored.values["diversity@10"] <= 1
    assert set(scored.users[next(iter(scored.users))]) >= {"diversity@10", "novelty@10"}
    rendered = table([baseline, scored])
    for measure in ("diversity", "novelty", "gini"):
        assert f"| {measure}@10 |" in rendered
    assert gini([5, 5, 5, 5]) == pytest.approx(0)
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)
    assert space.diversity(["85123A", "85123A"]) == pytest.approx(0, abs=1e-6)


def test_evaluate_by_country_prints_groups() -> None:
    result = runner.invoke(
        app, ["ranking", "evaluate", "--data", str(SLICE), "--by", "Country", "--min-users", "10"]
    )
    assert result.exit_code == 0, result.output
    assert "model by Country" in result.output
    assert "| group | users | ndcg@10 | precision@10 | recall@10 | hit_rate@10 |" in result.output
    assert "| United Kingdom | 136 | " in result.output
    assert "| other | 22 | " in result.output
    assert "other: Australia, Belgium" in result.output
    assert "no group is served clearly worse than the rest" in result.output
    assert "| gini@10 |" in result.output


def test_evaluate_refuses_unknown_attributes_and_bad_bands() -> None:
    unknown = runner.invoke(app, ["ranking", "evaluate", "--data", str(SLICE), "--by", "Age"])
    assert unknown.exit_code == 1
    assert "--by: no customer in" in unknown.output
    assert "'Age'" in unknown.output
    bad = runner.invoke(app, ["ranking", "evaluate", "--data", str(SLICE), "--by", "Country",
                              "--bands", "65,25"])  # fmt: skip
    assert bad.exit_code == 1
    assert "--bands: '65,25' is not increasing numbers" in bad.output
