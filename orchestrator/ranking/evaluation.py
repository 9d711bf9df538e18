"""Offline evaluation: train on purchases before a date, score what users bought after.

For each user who bought before the cut-off and bought something new to them after
it, each model recommends k items the user has not bought before; the relevant items
are the new ones they bought after (binary relevance, as the dataset's README
advises for this wholesale-heavy data).

    precision@k   hits / k
    recall@k      hits / relevant items
    NDCG@k        discounted hits / the best possible
    hit rate@k    share of users with at least one hit
    coverage@k    share of the catalogue recommended to anyone
    diversity@k   intra-list diversity: mean pairwise 1 - cosine of content vectors
                  (when an `ItemSpace` is given)
    novelty@k     mean -log2 of the items' share of training buyers
    gini@k        concentration of how often each catalogue item is recommended

(`beyond_accuracy` defines the last three.) Every measure but coverage and Gini is
also kept per user (`Metrics.users`), for paired comparisons and `fairness.by_group`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.ranking.beyond_accuracy import ItemSpace, gini, item_novelty
from orchestrator.ranking.model import histories
from orchestrator.ranking.retail import Purchase

Recommend = Callable[[str, int], list[str]]
KS = (5, 10, 20)
MEASURES = ("precision", "recall", "ndcg", "hit_rate", "coverage", "diversity", "novelty", "gini")


@dataclass(frozen=True)
class Split:
    train: list[Purchase]
    history: dict[str, dict[str, datetime]]  # user -> item -> last bought, before the cut-off
    relevant: dict[str, set[str]]  # user -> items new to them after the cut-off
    cold_users: int  # bought after the cut-off only


def split(purchases: Sequence[Purchase], cutoff: datetime) -> Split:
    train = [p for p in purchases if p.at < cutoff]
    history = histories(train)
    later: dict[str, set[str]] = defaultdict(set)
    for p in purchases:
        if p.at >= cutoff:
            later[p.user].add(p.item)
    relevant = {
        user: items - history[user].keys()
        for user, items in later.items()
        if user in history and items - history[user].keys()
    }
    cold = sum(1 for user in later if user not in history)
    return Split(train, history, relevant, cold)


@dataclass(frozen=True)
class Metrics:
    name: str
    values: dict[str, float]  # e.g. "ndcg@10", averaged over users
    seconds: float
    # Each scored user's own values (not coverage): paired comparisons and groups.
    users: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)


def evaluate(
    name: str,
    recommend: Recommend,
    data: Split,
    catalogue_size: int,
    *,
    space: ItemSpace | None = None,
) -> Metrics:
    started = time.perf_counter()
    top = max(KS)
    sums: dict[str, float] = defaultdict(float)
    shown: dict[int, defaultdict[str, int]] = {k: defaultdict(int) for k in KS}
    novelty, unseen = item_novelty(data.train)
    each: dict[str, dict[str, float]] = {}
    for user, relevant in data.relevant.items():
        ranked = recommend(user, top)
        mine = each[user] = {}
        for k in KS:
            head = ranked[:k]
            hits = [item in relevant for item in head]
            found = sum(hits)
            dcg = sum(1 / math.log2(n + 2) for n, hit in enumerate(hits) if hit)
            ideal = sum(1 / math.log2(n + 2) for n in range(min(k, len(relevant))))
            mine[f"precision@{k}"] = found / k
            mine[f"recall@{k}"] = found / len(relevant)
            mine[f"ndcg@{k}"] = dcg / ideal
            mine[f"hit_rate@{k}"] = 1.0 if found else 0.0
            mine[f"novelty@{k}"] = (
                sum(novelty.get(item, unseen) for item in head) / len(head) if head else 0.0
            )
            if space is not None:
                mine[f"diversity@{k}"] = space.diversity(head)
            for item in head:
                shown[k][item] += 1
        for key, value in mine.items():
            sums[key] += value
    users = max(1, len(data.relevant))
    values = {key: total / users for key, total in sums.items()}
    for k in KS:
        values[f"coverage@{k}"] = len(shown[k]) / max(1, catalogue_size)
        # Items never recommended count as zeros, so the catalogue is the population.
        counts = [*shown[k].values(), *[0] * max(0, catalogue_size - len(shown[k]))]
        values[f"gini@{k}"] = gini(counts)
    return Metrics(name, values, time.perf_counter() - started, each)


def table(results: Sequence[Metrics]) -> str:
    """A Markdown table: one row per metric, one column per model (a measure no model
    has, such as diversity without an `ItemSpace`, is left out)."""
    names = [r.name for r in results]
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for measure in MEASURES:
        for k in KS:
            key = f"{measure}@{k}"
            if not any(key in r.values for r in results):
                continue
            cells = " | ".join(
                f"{r.values[key]:.4f}" if key in r.values else "n/a" for r in results
            )
            lines.append(f"| {key} | {cells} |")
    return "\n".join(lines)
