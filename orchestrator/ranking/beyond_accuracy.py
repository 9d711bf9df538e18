"""Beyond-accuracy measures of recommendation lists, for offline evaluation.

intra-list diversity  mean pairwise dissimilarity within a list: 1 - cosine of the
                      items' content vectors (name words and price band)
novelty               mean -log2 of each item's popularity in training: the share of
                      training users who bought it (an item nobody bought counts
                      as bought by one), so 0 is an item everyone bought
Gini                  concentration of how often each catalogue item is
                      recommended over all lists: 0 when all are shown equally
                      often, near 1 when a few items fill every list
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from orchestrator.ranking.model import Matrix, content_vectors
from orchestrator.ranking.retail import Item, Purchase


class ItemSpace:
    """Items as unit content vectors: similarity and dissimilarity between items."""

    def __init__(self, items: Mapping[str, Item]) -> None:
        self.ids = sorted(items)
        self.position = {item: n for n, item in enumerate(self.ids)}
        vectors = content_vectors([items[i] for i in self.ids])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1
        self.vectors: Matrix = (vectors / norms).astype(np.float32)

    def similarity(self, items: Sequence[str]) -> Matrix:
        """Cosine similarity between every pair of `items` (unknown items: 0)."""
        rows = [self.position.get(i) for i in items]
        known = np.array([r is not None for r in rows])
        vectors = np.zeros((len(items), self.vectors.shape[1]), dtype=np.float32)
        if known.any():
            vectors[known] = self.vectors[[r for r in rows if r is not None]]
        similarity: Matrix = (vectors @ vectors.T).astype(np.float32)
        return similarity

    def diversity(self, items: Sequence[str]) -> float:
        """Mean of 1 - cosine over the pairs of a list (0 for fewer than two items)."""
        if len(items) < 2:
            return 0.0
        similarity = self.similarity(items)
        pairs = len(items) * (len(items) - 1)
        return float(1 - (similarity.sum() - np.trace(similarity)) / pairs)


def item_novelty(purchases: Iterable[Purchase]) -> tuple[dict[str, float], float]:
    """-log2 of each bought item's share of buyers, and the value for an item nobody
    bought (as if one user had)."""
    buyers: dict[str, set[str]] = defaultdict(set)
    users: set[str] = set()
    for p in purchases:
        buyers[p.item].add(p.user)
        users.add(p.user)
    total = max(1, len(users))
    novelty = {item: -math.log2(len(who) / total) for item, who in buyers.items()}
    return novelty, math.log2(total)


def gini(counts: Sequence[float]) -> float:
    """The Gini coefficient of non-negative counts (0 for none or all zero)."""
    ordered = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(ordered), float(ordered.sum())
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * ordered).sum()) / (n * total) - (n + 1) / n)
