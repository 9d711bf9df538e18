"""The diversity stage after ranking: maximal marginal relevance and per-category limits.

    select        the pure re-ranking: greedily picks, among the model's candidates,
                  the item with the best λ·relevance - (1 - λ)·(its largest similarity
                  to what is already picked), skipping items whose category already
                  has `per_category` items in the list
    Diversifier   the channels' `Reranker` for one slot (`ranking.slots.<slot>.
                  diversity`): similarity is 1 between items of the same catalogue
                  category, else 0; items without a category are limited by nothing
    derived_categories
                  for data without categories (the UCI retail file): item names
                  clustered by k-means over their TF-IDF vectors

Relevance is the model's score scaled to 0..1 over the candidates, so λ trades the
same units whatever the model's scale. λ = 1 keeps the model's order (then only the
per-category limit acts).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.cluster.vq import kmeans2  # type: ignore[import-untyped]

from channels.ranking import ScoredItem
from orchestrator.ranking.model import HybridModel, Matrix, content_vectors
from orchestrator.ranking.retail import Item

if TYPE_CHECKING:
    from orchestrator.ranking.config import DiversityConfig, RankingConfig

_WORD = re.compile(r"[a-z]+")
Similarity = Callable[[Sequence[str]], Matrix]  # items -> their pairwise similarity


def candidates_for(k: int) -> int:
    """How many of the model's items the stage chooses k from: enough room to swap."""
    return min(100, max(4 * k, k + 20))


def category_similarity(categories: Mapping[str, str | None]) -> Similarity:
    """1 between two items of the same (known) category, else 0."""

    def similarity(items: Sequence[str]) -> Matrix:
        labels = [categories.get(i) for i in items]
        same = np.array(
            [[a is not None and a == b for b in labels] for a in labels], dtype=np.float32
        ).reshape(len(items), len(items))
        return same

    return similarity


def select(
    items: Sequence[str],
    scores: Sequence[float],
    k: int,
    *,
    mmr_lambda: float = 1.0,
    per_category: int | None = None,
    categories: Mapping[str, str | None] | None = None,
    similarity: Similarity | None = None,
    chosen: Sequence[str] = (),
) -> list[str]:
    """Up to k of `items` (best first by `scores`), re-ranked for diversity, following
    the items already `chosen` (which count towards the limits and the similarity)."""
    if not 0 < mmr_lambda <= 1:
        raise ValueError("mmr_lambda must be in (0, 1]")
    if per_category is not None and per_category < 1:
        raise ValueError("per_category must be at least 1")
    categories = categories or {}
    similarity = similarity or category_similarity(categories)
    n = len(items)
    if n == 0 or k <= 0:
        return []
    relevance = np.asarray(scores, dtype=np.float64)
    spread = float(relevance.max() - relevance.min())
    relevance = (relevance - relevance.min()) / spread if spread > 0 else np.ones(n)
    everything = [*chosen, *items]
    nearest = np.zeros(n)  # each candidate's largest similarity to what is picked
    if mmr_lambda < 1 and chosen:
        matrix = similarity(everything)
        nearest = matrix[len(chosen) :, : len(chosen)].max(axis=1).astype(np.float64)
    elif mmr_lambda < 1:
        matrix = similarity(items)
    used = Counter(c for c in (categories.get(i) for i in chosen) if c is not None)
    open_ = np.ones(n, dtype=bool)
    picked: list[str] = []
    while len(picked) < k and open_.any():
        value = mmr_lambda * relevance - (1 - mmr_lambda) * nearest
        value[~open_] = -np.inf
        best = int(np.argmax(value))  # the first of equals: the model's order breaks ties
        if not np.isfinite(value[best]):
            break
        open_[best] = False
        category = categories.get(items[best])
        if per_category is not None and category is not None:
            if used[category] >= per_category:
                continue
            used[category] += 1
        picked.append(items[best])
        if mmr_lambda < 1:
            nearest = np.maximum(nearest, matrix[len(chosen) :, len(chosen) + best])
    return picked


class Diversifier:
    """The diversity stage for one slot, over catalogue items (their `category`)."""

    def __init__(self, *, mmr_lambda: float = 1.0, per_category: int | None = None) -> None:
        if not 0 < mmr_lambda <= 1:
            raise ValueError("mmr_lambda must be in (0, 1]")
        if per_category is not None and per_category < 1:
            raise ValueError("per_category must be at least 1")
        self.mmr_lambda, self.per_category = mmr_lambda, per_category

    @classmethod
    def from_config(cls, config: DiversityConfig) -> Diversifier:
        return cls(mmr_lambda=config.mmr_lambda, per_category=config.per_category)

    def candidates(self, k: int) -> int:
        return candidates_for(k)

    def settings(self) -> dict[str, Any]:
        """What a message's `content_source.diversity` records."""
        found: dict[str, Any] = {"mmr_lambda": self.mmr_lambda}
        if self.per_category is not None:
            found["per_category"] = self.per_category
        return found

    def rerank(
        self,
        ranked: Sequence[ScoredItem],
        items: Mapping[str, Mapping[str, Any]],
        k: int,
        *,
        chosen: Sequence[ScoredItem] = (),
    ) -> list[ScoredItem]:
        every = [*chosen, *ranked]
        categories = {s.item_id: _category(items.get(s.item_id)) for s in every}
        picked = select(
            [s.item_id for s in ranked],
            [s.score for s in ranked],
            k,
            mmr_lambda=self.mmr_lambda,
            per_category=self.per_category,
            categories=categories,
            chosen=[s.item_id for s in chosen],
        )
        by_id = {s.item_id: s for s in ranked}
        return [by_id[i] for i in picked]


def _category(item: Mapping[str, Any] | None) -> str | None:
    value = (item or {}).get("category")
    return str(value).strip().lower() or None if value is not None else None


def rerankers_for(ranking: RankingConfig) -> dict[str, Diversifier]:
    """The configured slots' diversity stages, by slot."""
    return {
        slot: Diversifier.from_config(config.diversity)
        for slot, config in ranking.slots.items()
        if config.diversity is not None
    }


def derived_categories(
    items: Mapping[str, Item], *, clusters: int = 60, seed: int = 0
) -> dict[str, str]:
    """A category per item from its name alone: spherical k-means over TF-IDF name
    vectors (prices left out), each cluster named by its two heaviest words."""
    ids = sorted(items)
    if not ids:
        return {}
    # Equal prices put every item in one price band, which then weighs nothing.
    vectors = content_vectors([Item(i, items[i].name, 0.0) for i in ids]).astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1
    vectors /= norms
    with warnings.catch_warnings():
        # An emptied cluster only means fewer categories.
        warnings.simplefilter("ignore")
        _, labels = kmeans2(
            vectors, min(clusters, len(ids)), minit="++", seed=np.random.default_rng(seed)
        )
    return _named(items, ids, labels.tolist())


def _named(items: Mapping[str, Item], ids: Sequence[str], labels: Sequence[int]) -> dict[str, str]:
    """Each cluster named by the two words most typical of its items' names (count in
    the cluster times inverse document frequency over the catalogue)."""
    words = {item: set(_WORD.findall(items[item].name.lower())) for item in ids}
    frequency = Counter(word for found in words.values() for word in found)
    members: dict[int, Counter[str]] = {}
    for item, label in zip(ids, labels, strict=True):
        members.setdefault(label, Counter()).update(words[item])
    names = {}
    for label, counts in members.items():
        typical = sorted(counts, key=lambda w: (-counts[w] * math.log(len(ids) / frequency[w]), w))
        names[label] = "/".join(typical[:2]) or f"cluster {label}"
    return {item: names[label] for item, label in zip(ids, labels, strict=True)}


def diversified(
    model: HybridModel,
    history: Mapping[str, Mapping[str, datetime]],
    categories: Mapping[str, str],
    *,
    mmr_lambda: float = 1.0,
    per_category: int | None = None,
) -> Callable[[str, int], list[str]]:
    """The model's recommendations after the diversity stage, as offline evaluation
    calls them (user, k): chosen from `candidates_for(k)` of the model's items, with
    similarity between categories as at serving."""
    cats: Mapping[str, str | None] = categories

    def recommend(user: str, k: int) -> list[str]:
        scores = model.recommend(history[user], candidates_for(k))
        return select(scores.items, scores.scores, k, mmr_lambda=mmr_lambda,
                      per_category=per_category, categories=cats)  # fmt: skip

    return recommend
