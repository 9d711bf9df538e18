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
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.ranking.model import histories
from orchestrator.ranking.retail import Purchase

Recommend = Callable[[str, int], list[str]]
KS = (5, 10, 20)


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


def evaluate(name: str, recommend: Recommend, data: Split, catalogue_size: int) -> Metrics:
    started = time.perf_counter()
    top = max(KS)
    sums: dict[str, float] = defaultdict(float)
    shown: dict[int, set[str]] = {k: set() for k in KS}
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
            shown[k].update(head)
        for key, value in mine.items():
            sums[key] += value
    users = max(1, len(data.relevant))
    values = {key: total / users for key, total in sums.items()}
    for k in KS:
        values[f"coverage@{k}"] = len(shown[k]) / max(1, catalogue_size)
    return Metrics(name, values, time.perf_counter() - started, each)


def table(results: Sequence[Metrics]) -> str:
    """A Markdown table: one row per metric, one column per model."""
    names = [r.name for r in results]
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for measure in ("precision", "recall", "ndcg", "hit_rate", "coverage"):
        for k in KS:
            key = f"{measure}@{k}"
            cells = " | ".join(f"{r.values[key]:.4f}" for r in results)
            lines.append(f"| {key} | {cells} |")
    return "\n".join(lines)
