"""The models: the built-in hybrid, the popularity baseline, and EASE for comparison.

Hybrid (what the channels use): a user's purchase history, weighted by recency, is
spread over items through

- time-decayed co-occurrence: users who bought X (recently) bought Y, as a cosine
  between items' decayed buyer vectors (a buyer of hundreds of items counts less
  than one of a few), and
- content similarity: a cosine over item text (name words, price band), which gives
  items with little or no history neighbours,

both squared (sharpened, so strong neighbours dominate) and damped for items that
neighbour everything, plus
- EASE's item weights (below) fitted on the time-decayed purchases instead of 0/1 ones,
  their positive part scaled to the same size as the rest and added (`ease_weight`;
  skipped above `ease_max_items` bought items, where the dense inverse gets too big;
  items nobody bought have their similarities scaled up alike, so new items keep
  their reach through content),

plus a small share of time-decayed popularity. A user with no history gets
popularity, with confidence 0, so the channels can tell. EASE (Steck, 2019) is the
closed-form item-item model `B = I - P / diag(P)`, `P = (X'X + lambda I)^-1`: a strong
simple baseline to compare with, not served.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from orchestrator.ranking.retail import Item, Purchase

Matrix = NDArray[np.float32]
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Settings:
    """`content_weight`, `ease_weight` and `ease_regularisation` are what validation
    chose for the latest cut (trained before 2011-10-02, scored to 2011-11-01:
    `orchestrator.ranking.tuning`, bench/README.md issue 15); the rest were chosen on the
    2011-09-01 test split itself (issue 5) and kept, validation's choices for them there
    being the same or within 0.1% NDCG@10. A version
    stored before a field existed loads with its default: the fields after `neighbours`
    only change training."""

    half_life_days: float = 60.0  # co-occurrence and popularity
    history_half_life_days: float = 180.0  # a user's own purchases, when scoring
    shrink: float = 0.2  # damps co-occurrence resting on few buyers
    row_damping: float = 0.5  # rows divided by (row sum)^this: hub items speak softer
    content_weight: float = 0.3
    popularity_weight: float = 0.01
    sharpen: float = 2.0
    neighbours: int = 400  # kept per item; the rest of each similarity row is dropped
    ease_weight: float = 2.0  # EASE on decayed purchases, relative to the rest (0: off)
    ease_regularisation: float = 100.0
    ease_max_items: int = 8000  # more bought items than this: no EASE part (memory)


@dataclass
class Index:
    """Dense ids for users and items."""

    items: list[str]
    users: list[str]
    item_pos: dict[str, int] = field(init=False)
    user_pos: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.item_pos = {item: n for n, item in enumerate(self.items)}
        self.user_pos = {user: n for n, user in enumerate(self.users)}


def decay(purchases: Sequence[Purchase], index: Index, now: datetime, half_life: float) -> Matrix:
    """users x items: each cell the recency weight of the user's latest purchase of it."""
    matrix = np.zeros((len(index.users), len(index.items)), dtype=np.float32)
    rate = math.log(2) / (half_life * 86400)
    for p in purchases:
        u, i = index.user_pos.get(p.user), index.item_pos.get(p.item)
        if u is None or i is None:
            continue
        weight = math.exp(-rate * max(0.0, (now - p.at).total_seconds()))
        if weight > matrix[u, i]:
            matrix[u, i] = weight
    return matrix


def _cosine(vectors: Matrix, shrink: float = 0.0) -> Matrix:
    """Row-by-row cosine similarity, with each row's self-similarity removed; `shrink`
    is added to the denominator, so pairs with little evidence count for less."""
    norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
    similarity: Matrix = (vectors @ vectors.T).astype(np.float32)
    similarity /= np.outer(norms, norms) + shrink + 1e-9
    np.fill_diagonal(similarity, 0)
    return similarity


def _sharpened(similarity: Matrix, power: float) -> Matrix:
    return np.power(np.maximum(similarity, 0), power, dtype=np.float32)


def content_vectors(items: Sequence[Item]) -> Matrix:
    """TF-IDF over name words and a price band, one row per item."""
    prices = sorted(item.price for item in items)
    bands = [prices[len(prices) * q // 5] for q in range(1, 5)]
    documents = []
    for item in items:
        band = sum(item.price > b for b in bands)
        documents.append([*_WORD.findall(item.name.lower()), f"price_band_{band}"])
    vocabulary: dict[str, int] = {}
    for words in documents:
        for word in words:
            vocabulary.setdefault(word, len(vocabulary))
    counts = np.zeros((len(items), max(1, len(vocabulary))), dtype=np.float32)
    for row, words in enumerate(documents):
        for word in words:
            counts[row, vocabulary[word]] += 1
    document_frequency = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(items)) / (1 + document_frequency)) + 1
    weighted: Matrix = (counts * idf).astype(np.float32)
    return weighted


def _positive_ease(weights: Matrix, regularisation: float, limit: int) -> Matrix | None:
    """items x items: EASE's weights fitted on `weights` (users x items), negative ones
    dropped; None when fewer than two or more than `limit` items were bought."""
    bought = np.flatnonzero(weights.any(axis=0))
    if not 2 <= len(bought) <= limit:
        return None
    x = weights[:, bought].astype(np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += regularisation
    inverse = np.linalg.inv(gram)
    b = -inverse / np.diag(inverse)
    np.fill_diagonal(b, 0)
    full = np.zeros((weights.shape[1], weights.shape[1]), dtype=np.float32)
    full[np.ix_(bought, bought)] = np.maximum(b, 0)
    return full


@dataclass
class Scores:
    """Ranked item ids with their scores and how sure the model is."""

    items: list[str]
    scores: list[float]
    confidence: float


History = Mapping[str, datetime]  # item -> when the user last bought it


def histories(purchases: Iterable[Purchase]) -> dict[str, dict[str, datetime]]:
    """Each user's items and when they last bought each."""
    found: dict[str, dict[str, datetime]] = {}
    for p in purchases:
        mine = found.setdefault(p.user, {})
        if p.item not in mine or p.at > mine[p.item]:
            mine[p.item] = p.at
    return found


@dataclass
class HybridModel:
    """A trained model: each item's strongest neighbours (co-occurrence and content,
    weighted) and item popularity. Small enough to store as one version and to load in
    every worker; a user's answer sums the neighbour rows of what they bought."""

    items: list[str]
    neighbours: NDArray[np.int32]  # items x neighbours: positions of each item's neighbours
    weights: Matrix  # the matching similarities
    popularity: Matrix  # 0..1
    settings: Settings
    trained_until: datetime
    item_pos: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_pos = {item: n for n, item in enumerate(self.items)}

    @classmethod
    def train(
        cls,
        purchases: Sequence[Purchase],
        items: Mapping[str, Item],
        *,
        now: datetime,
        settings: Settings | None = None,
    ) -> HybridModel:
        settings = settings or Settings()
        catalogue = sorted(items)
        index = Index(catalogue, sorted({p.user for p in purchases}))
        history = decay(purchases, index, now, settings.half_life_days)
        bought = np.count_nonzero(history, axis=1)
        buyers = history * (1 / np.log2(2 + bought))[:, None]
        similarity = _sharpened(_cosine(buyers.T.copy(), settings.shrink), settings.sharpen)
        content = _cosine(content_vectors([items[i] for i in catalogue]))
        similarity += settings.content_weight * _sharpened(content, settings.sharpen)
        totals = similarity.sum(axis=1, keepdims=True)
        totals[totals == 0] = 1
        similarity /= np.power(totals, settings.row_damping, dtype=np.float32)
        if settings.ease_weight > 0:
            ease = _positive_ease(history, settings.ease_regularisation, settings.ease_max_items)
            if ease is not None:
                size = float(similarity.sum(axis=1).mean()) / max(
                    float(ease.sum(axis=1).mean()), 1e-9
                )
                similarity += (settings.ease_weight * size) * ease
                # Items nobody has bought get nothing from EASE: their content
                # similarity is scaled up alike, so a new item stays as reachable.
                similarity[:, ~history.any(axis=0)] *= 1 + settings.ease_weight
        m = min(settings.neighbours, len(catalogue) - 1) if len(catalogue) > 1 else 0
        if m > 0:
            neighbours = np.argpartition(-similarity, m - 1, axis=1)[:, :m].astype(np.int32)
        else:
            neighbours = np.zeros((len(catalogue), 0), dtype=np.int32)
        weights = np.take_along_axis(similarity, neighbours, axis=1).astype(np.float32)
        popularity = history.sum(axis=0)
        popularity = (popularity / max(float(popularity.max(initial=0)), 1e-9)).astype(np.float32)
        return cls(catalogue, neighbours, weights, popularity, settings, now)

    def recommend(
        self,
        history: History,
        k: int,
        exclude: Iterable[str] = (),
        *,
        now: datetime | None = None,
    ) -> Scores:
        """The top k for a user who bought `history`; without history, popularity
        with confidence 0."""
        now = now or self.trained_until
        rate = math.log(2) / (self.settings.history_half_life_days * 86400)
        bought = [(self.item_pos[i], at) for i, at in history.items() if i in self.item_pos]
        banned = [self.item_pos[i] for i in exclude if i in self.item_pos]
        scores = self.settings.popularity_weight * self.popularity
        if not bought:
            return self._top(self.popularity.copy(), k, banned, confidence=0.0)
        rows = np.array([b for b, _ in bought], dtype=np.int64)
        recency = np.array(
            [math.exp(-rate * max(0.0, (now - at).total_seconds())) for _, at in bought],
            dtype=np.float32,
        )
        scores = scores.copy()
        np.add.at(
            scores, self.neighbours[rows].ravel(), (recency[:, None] * self.weights[rows]).ravel()
        )
        # More history and more recent history make the answer surer.
        confidence = float(1 - math.exp(-float(recency.sum()) / 3)) * min(1.0, len(rows) / 2)
        return self._top(scores, k, [*banned, *rows.tolist()], confidence)

    def dump(self) -> bytes:
        """The model as one compressed blob (numpy arrays, no pickle)."""
        meta = {"settings": asdict(self.settings), "trained_until": self.trained_until.isoformat()}
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            items=np.array(self.items),
            neighbours=self.neighbours,
            weights=self.weights,
            popularity=self.popularity,
            meta=np.array(json.dumps(meta)),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, blob: bytes) -> HybridModel:
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            return cls(
                [str(i) for i in arrays["items"]],
                arrays["neighbours"],
                arrays["weights"],
                arrays["popularity"],
                Settings(**meta["settings"]),
                datetime.fromisoformat(meta["trained_until"]),
            )

    def _top(self, scores: Matrix, k: int, banned: Iterable[int], confidence: float) -> Scores:
        scores[list(banned)] = -np.inf
        k = min(k, len(scores))
        if k <= 0:
            return Scores([], [], confidence)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        top = top[np.isfinite(scores[top])]
        return Scores([self.items[i] for i in top], [float(scores[i]) for i in top], confidence)


class Popularity:
    """The baseline: the most bought items over the training window, time-decayed."""

    def __init__(self, purchases: Sequence[Purchase], *, now: datetime, half_life: float = 60):
        items = sorted({p.item for p in purchases})
        index = Index(items, sorted({p.user for p in purchases}))
        weights = decay(purchases, index, now, half_life).sum(axis=0)
        order = np.argsort(-weights, kind="stable")
        self.ranked = [items[i] for i in order]

    def recommend(self, user: str, k: int, exclude: Iterable[str] = ()) -> list[str]:
        banned = set(exclude)
        return [i for i in self.ranked if i not in banned][:k]


class Ease:
    """EASE (Steck, 2019) over binary purchases, for offline comparison."""

    def __init__(self, purchases: Sequence[Purchase], *, regularisation: float = 250.0):
        self.index = Index(sorted({p.item for p in purchases}), sorted({p.user for p in purchases}))
        x = np.zeros((len(self.index.users), len(self.index.items)), dtype=np.float64)
        for p in purchases:
            x[self.index.user_pos[p.user], self.index.item_pos[p.item]] = 1
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += regularisation
        inverse = np.linalg.inv(gram)
        b = -inverse / np.diag(inverse)
        np.fill_diagonal(b, 0)
        self.x, self.b = x.astype(np.float32), b.astype(np.float32)

    def recommend(self, user: str, k: int, exclude: Iterable[str] = ()) -> list[str]:
        row = self.index.user_pos.get(user)
        if row is None:
            return []
        scores = self.x[row] @ self.b
        scores[self.x[row] > 0] = -np.inf
        for item in exclude:
            if item in self.index.item_pos:
                scores[self.index.item_pos[item]] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k]
        return [self.index.items[i] for i in top[np.argsort(-scores[top])]]
