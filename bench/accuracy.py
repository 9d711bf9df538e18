"""The ranking model's accuracy, honestly: settings chosen on validation, scored on
cuts no setting saw, and compared with EASE paired over users.

For each test cut: every model's settings are chosen on the month before the cut
(`orchestrator.ranking.tuning`), then each model is retrained on everything before the
cut and scored on what returning users bought after it. Prints the chosen settings,
precision, recall, NDCG and hit rate at 10, and the model's relative NDCG@10 difference
from EASE (and from popularity) with a paired bootstrap 95% interval.

    PYTHONPATH=$PWD .venv/bin/python -m bench.accuracy [--cuts 2011-09-01 ...]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.ranking.evaluate_cli import DEFAULT_DATA
from orchestrator.ranking.evaluation import Metrics
from orchestrator.ranking.retail import Dataset, read_retail
from orchestrator.ranking.tuning import (
    CONTENDERS,
    VALIDATION_DAYS,
    Contender,
    choose,
    held_out_split,
    paired,
    score,
    validation_split,
)

SHOWN = ("ndcg@10", "precision@10", "recall@10", "hit_rate@10")


def _changed(contender: Contender, chosen: dict[str, Any]) -> str:
    """The searched settings as chosen (the others stay at their defaults)."""
    return ", ".join(f"{axis}={chosen[axis]:g}" for axis in contender.grid)


def run_cut(dataset: Dataset, cut: datetime, resamples: int) -> None:
    started = time.perf_counter()
    validation = validation_split(dataset.purchases, cut)
    test = held_out_split(dataset.purchases, cut)
    start = cut - timedelta(days=VALIDATION_DAYS)
    print(f"\n## cut {cut:%Y-%m-%d}: validation trains before {start:%Y-%m-%d} "
          f"and scores {len(validation.relevant):,} users up to the cut; the test scores "
          f"{len(test.relevant):,} users after it")  # fmt: skip
    results: dict[str, Metrics] = {}
    for contender in CONTENDERS:
        choice = choose(contender, validation, dataset.items, now=start)
        tried = len(choice.tried)
        print(f"- {contender.name}: {_changed(contender, choice.settings)} "
              f"(validation NDCG@10 {choice.score:.4f}, {tried} settings tried)")  # fmt: skip
        if contender.name == "model":
            for settings, value in choice.tried:
                moved = {a: v for a, v in settings.items() if v != contender.start[a]}
                label = ", ".join(f"{a}={v:g}" for a, v in moved.items()) or "defaults"
                print(f"  - {label}: {value:.4f}")
        results[contender.name] = score(
            contender, test, dataset.items, now=cut, settings=choice.settings
        )
    names = [c.name for c in CONTENDERS]
    print("\n| metric | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key in SHOWN:
        print(f"| {key} | " + " | ".join(f"{results[n].values[key]:.4f}" for n in names) + " |")
    for other in ("EASE", "popularity"):
        d = paired(results["model"], results[other], resamples=resamples)
        print(f"\nmodel vs {other}, NDCG@10: {d.relative:+.1%} (95% interval {d.low:+.1%} to "
              f"{d.high:+.1%}; paired bootstrap, {d.resamples:,} resamples of {d.users:,} users)",
              end="")  # fmt: skip
    print(f"\n\n({time.perf_counter() - started:.0f} s for this cut)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cuts", nargs="+", default=["2011-10-01", "2011-11-01", "2011-09-01"])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    dataset = read_retail(args.data)
    print(f"{dataset.kept:,} clean purchases of {len(dataset.items):,} items; validation: the "
          f"{VALIDATION_DAYS} days before each cut")  # fmt: skip
    for cut in args.cuts:
        run_cut(dataset, datetime.fromisoformat(cut), args.resamples)


if __name__ == "__main__":
    main()
