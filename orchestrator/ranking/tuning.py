"""Choosing settings without looking at the test, and comparing two models paired.

For a test cut C the validation split ends where the test begins: purchases at or after
C are dropped, the rest are split at V = C - `VALIDATION_DAYS` (train before V, score
the users' new purchases in V..C). Every model's settings (the built-in model's, EASE's
regularisation, popularity's half-life) are chosen on that split only; each model is
then retrained on everything before C with its chosen settings and scored after C.

One month of validation: the most recent month before the cut, so validation sees the
same season's drift as the test as nearly as it can, and it still holds about 900
returning users on the retail data (more than half the test's).

`paired` compares two models scored on the same users: the users are resampled with
replacement (the same draw for both models) and the relative difference of the means
recomputed each time; the 2.5th and 97.5th percentiles are the 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from orchestrator.ranking.evaluation import Metrics, Recommend, Split, evaluate, split
from orchestrator.ranking.model import Ease, HybridModel, Popularity, Settings
from orchestrator.ranking.retail import Item, Purchase

VALIDATION_DAYS = 30
DECIDING = "ndcg@10"


class TuningError(Exception):
    """A split with nothing to train on or nothing to score; the message says which."""


def held_out_split(purchases: Sequence[Purchase], cut: datetime) -> Split:
    """Train before `cut`, score after it."""
    held = split(purchases, cut)
    if not held.train:
        raise TuningError(f"no purchases before the cut {cut:%Y-%m-%d}")
    if not held.relevant:
        raise TuningError(
            f"no returning user bought anything new to them on or after the cut {cut:%Y-%m-%d}"
        )
    return held


def validation_split(
    purchases: Sequence[Purchase], cut: datetime, *, days: int = VALIDATION_DAYS
) -> Split:
    """Train before `cut - days`, score `cut - days` to `cut`; nothing at or after `cut`."""
    start = cut - timedelta(days=days)
    held = split([p for p in purchases if p.at < cut], start)
    if not held.train:
        raise TuningError(
            f"validation is empty: no purchases before {start:%Y-%m-%d} "
            f"({days} days before the cut {cut:%Y-%m-%d})"
        )
    if not held.relevant:
        raise TuningError(
            f"validation is empty: no returning user bought anything new to them "
            f"between {start:%Y-%m-%d} and the cut {cut:%Y-%m-%d}"
        )
    return held


@dataclass(frozen=True)
class Contender:
    """A model, the settings to try, and how to train one of them into a recommender.
    `grid` is searched one axis at a time (coordinate search from `start`)."""

    name: str
    start: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]]
    build: Callable[[Split, Mapping[str, Item], datetime, Mapping[str, Any]], Recommend]


def _popularity(
    data: Split, items: Mapping[str, Item], now: datetime, s: Mapping[str, Any]
) -> Recommend:
    model = Popularity(data.train, now=now, half_life=s["half_life"])
    return lambda user, k: model.recommend(user, k, data.history[user])


def _ease(data: Split, items: Mapping[str, Item], now: datetime, s: Mapping[str, Any]) -> Recommend:
    model = Ease(data.train, regularisation=s["regularisation"])
    return model.recommend


def _model(
    data: Split, items: Mapping[str, Item], now: datetime, s: Mapping[str, Any]
) -> Recommend:
    model = HybridModel.train(data.train, items, now=now, settings=Settings(**s))
    return lambda user, k: model.recommend(data.history[user], k, now=now).items


POPULARITY = Contender("popularity", {"half_life": 60.0}, {"half_life": (15.0, 30.0, 60.0, 120.0)},
                       _popularity)  # fmt: skip
EASE = Contender("EASE", {"regularisation": 250.0},
                 {"regularisation": (50.0, 100.0, 250.0, 500.0, 1000.0)}, _ease)  # fmt: skip
MODEL = Contender(
    "model",
    asdict(Settings()),
    {
        "ease_weight": (0.0, 0.5, 1.0, 2.0, 4.0),
        "ease_regularisation": (100.0, 250.0, 500.0),
        "content_weight": (0.05, 0.15, 0.3),
        "history_half_life_days": (90.0, 180.0, 365.0),
        "popularity_weight": (0.0, 0.01, 0.1),
    },
    _model,
)
CONTENDERS = (POPULARITY, MODEL, EASE)


@dataclass(frozen=True)
class Choice:
    settings: dict[str, Any]
    score: float  # DECIDING on validation with these settings
    tried: list[tuple[dict[str, Any], float]]  # every setting tried, in order


def choose(
    contender: Contender, data: Split, items: Mapping[str, Item], *, now: datetime
) -> Choice:
    """The settings that score best on `data`: one pass over the axes, each set to its
    best value (the current one unless another beats it) before the next is tried."""
    tried: list[tuple[dict[str, Any], float]] = []
    known: dict[tuple[tuple[str, Any], ...], float] = {}

    def quality(settings: dict[str, Any]) -> float:
        key = tuple(sorted(settings.items()))
        if key not in known:
            recommend = contender.build(data, items, now, settings)
            known[key] = evaluate(contender.name, recommend, data, len(items)).values[DECIDING]
            tried.append((settings, known[key]))
        return known[key]

    best = dict(contender.start)
    for axis, values in contender.grid.items():
        here = [best[axis], *(v for v in values if v != best[axis])]  # ties keep the current
        scored = [(quality({**best, axis: value}), n, value) for n, value in enumerate(here)]
        top = max(score for score, _, _ in scored)
        best[axis] = next(value for score, _, value in scored if score == top)
    return Choice(best, quality(best), tried)


def score(
    contender: Contender,
    data: Split,
    items: Mapping[str, Item],
    *,
    now: datetime,
    settings: Mapping[str, Any],
) -> Metrics:
    """Train with `settings` on `data.train` and score on its held-out users."""
    return evaluate(contender.name, contender.build(data, items, now, settings), data, len(items))


@dataclass(frozen=True)
class Difference:
    """(a - b) / b of a per-user metric's means, with a paired bootstrap interval."""

    relative: float
    low: float
    high: float
    users: int
    resamples: int


def paired(
    a: Metrics, b: Metrics, *, metric: str = DECIDING, resamples: int = 2000, seed: int = 0
) -> Difference:
    """How much better `a` is than `b` on `metric`, relative to `b`, with a 95% interval
    from resampling the users (the same resampled users for both)."""
    if a.users.keys() != b.users.keys():
        raise TuningError(f"{a.name} and {b.name} were not scored on the same users")
    if not a.users:
        raise TuningError("no users to compare on")
    users = sorted(a.users)
    x = np.array([a.users[u][metric] for u in users])
    y = np.array([b.users[u][metric] for u in users])
    if y.sum() == 0:
        raise TuningError(f"{b.name} has {metric} 0 for every user: no relative difference")
    draws = np.random.default_rng(seed).integers(0, len(users), size=(resamples, len(users)))
    base = y[draws].mean(axis=1)
    relative = x[draws].mean(axis=1) / np.where(base > 0, base, np.nan) - 1
    low, high = np.nanpercentile(relative, [2.5, 97.5])
    return Difference(float(x.mean() / y.mean() - 1), float(low), float(high), len(users),
                      resamples)  # fmt: skip
