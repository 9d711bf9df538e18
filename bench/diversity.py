"""Diversity against accuracy: the built-in model after the diversity stage, for a sweep
of MMR lambdas and per-category limits, on the full retail dataset (cut 2011-09-01).

Prints, per setting, NDCG@10 beside catalogue coverage, intra-list diversity, Gini and
novelty at 10 (categories derived from item names, as `ranking evaluate --mmr` does),
then the model's per-Country report (`ranking evaluate --by Country`).

    PYTHONPATH=$PWD .venv/bin/python -m bench.diversity [--data FILE] [--min-users 30]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from orchestrator.ranking.beyond_accuracy import ItemSpace
from orchestrator.ranking.diversity import derived_categories, diversified
from orchestrator.ranking.evaluate_cli import DEFAULT_DATA, GROUP_METRICS
from orchestrator.ranking.evaluation import Metrics, evaluate, split
from orchestrator.ranking.fairness import by_group, summary
from orchestrator.ranking.model import HybridModel, Popularity
from orchestrator.ranking.retail import read_retail

CUTOFF = datetime(2011, 9, 1)  # noqa: DTZ001 (the dataset's times are naive)
LAMBDAS = (0.9, 0.7, 0.5, 0.3)
LIMITS = (3, 2, 1)


def row(setting: str, result: Metrics, baseline: float) -> str:
    v = result.values
    return (
        f"| {setting} | {v['ndcg@10']:.4f} ({v['ndcg@10'] / baseline - 1:+.1%}) | "
        f"{v['coverage@10']:.4f} | {v['diversity@10']:.4f} | {v['gini@10']:.4f} | "
        f"{v['novelty@10']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--min-users", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = read_retail(args.data)
    held = split(dataset.purchases, CUTOFF)
    size = len(dataset.items)
    space = ItemSpace(dataset.items)
    model = HybridModel.train(held.train, dataset.items, now=CUTOFF)
    categories = derived_categories(dataset.items)
    print(
        f"{len(held.relevant):,} scored users, {size:,} items in "
        f"{len(set(categories.values()))} name-derived categories; prepared in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    popularity = Popularity(held.train, now=CUTOFF)
    plain = evaluate("model", lambda u, k: model.recommend(held.history[u], k).items, held,
                     size, space=space)  # fmt: skip
    baseline = plain.values["ndcg@10"]
    print("| setting | NDCG@10 (vs model) | coverage@10 | diversity@10 | Gini@10 | novelty@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    popular = evaluate("popularity", lambda u, k: popularity.recommend(u, k, held.history[u]),
                       held, size, space=space)  # fmt: skip
    print(row("popularity", popular, baseline))
    print(row("model", plain, baseline))
    settings: list[tuple[str, float, int | None]] = [
        *((f"MMR lambda {lam}", lam, None) for lam in LAMBDAS),
        *((f"per category {n}", 1.0, n) for n in LIMITS),
        ("MMR 0.7 + per category 2", 0.7, 2),
    ]
    for name, lam, limit in settings:
        recommend = diversified(model, held.history, categories, mmr_lambda=lam,
                                per_category=limit)  # fmt: skip
        print(row(name, evaluate(name, recommend, held, size, space=space), baseline), flush=True)
    groups = {user: found.get("Country") for user, found in dataset.customers.items()}
    report = by_group(plain.users, groups, metrics=GROUP_METRICS, min_users=args.min_users)
    print("\n" + summary(report, title="model by Country"))


if __name__ == "__main__":
    main()
