"""Training a model version, deciding whether it goes live, and switching versions.

A candidate is first trained on all but the latest fifth of the purchases (by time)
and scored on that held-out fifth, beside popularity and the active version; it is
activated only if it beats both on NDCG@10. Either way it is then retrained on every
purchase and stored with its card (`cards`), so `activate VERSION` can switch to (or
back to) any version, and `canary VERSION` can try one on a share of users (`rollout`).

How much popularity to mix in depends on how much co-occurrence there is to go on
(a small shop needs more): it is chosen on the latest fifth of the training part, so
the held-out purchases stay unseen until the comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.access import audit
from orchestrator.catalog import PURCHASE_LINES
from orchestrator.ranking.cards import training_card
from orchestrator.ranking.drift import training_profile
from orchestrator.ranking.evaluation import Metrics, Split, evaluate, split
from orchestrator.ranking.model import HybridModel, Popularity, Settings
from orchestrator.ranking.retail import Item, Purchase
from orchestrator.ranking.rollout import VersionError as VersionError
from orchestrator.ranking.rollout import make_active
from orchestrator.tables import catalog_items, ranking_models

HOLDOUT = 0.2
DECIDING = "ndcg@10"
POPULARITY_WEIGHTS = (0.01, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Trained:
    version: int
    status: str
    reason: str
    metrics: dict[str, Any]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def holdout(purchases: Sequence[Purchase]) -> Split:
    """The latest fifth of the purchases (by time) held out."""
    times = sorted(p.at for p in purchases)
    return split(purchases, times[int(len(times) * (1 - HOLDOUT))])


def _scored(model: HybridModel, held: Split, size: int, now: datetime) -> Metrics:
    def recommend(user: str, k: int) -> list[str]:
        return model.recommend(held.history[user], k, now=now).items

    return evaluate("model", recommend, held, size)


def _score(model: HybridModel, held: Split, size: int, now: datetime) -> float:
    return _scored(model, held, size, now).values[DECIDING]


@dataclass(frozen=True)
class _Contest:
    wins: bool
    reason: str
    metrics: dict[str, Any]  # the gate's figures
    card: dict[str, Any]
    artifact: bytes


async def train(
    engine: AsyncEngine,
    purchases: Sequence[Purchase],
    items: dict[str, Item],
    *,
    source: str,
    actor: audit.Actor,
    groups: Mapping[str, object] | None = None,
    bands: Sequence[float] | None = None,
    drift_window: timedelta = timedelta(days=7),
    now: datetime | None = None,
) -> Trained:
    """Train, compare, store with its card; activate when the candidate wins (`actor`
    is who the audit log names for that). `groups` (user -> a trait's value, e.g. a
    country; numbers grouped by `bands`) adds held-out metrics by group to the card.
    The version keeps its training profile, which input drift is measured against
    (`drift_window`: `ranking.drift.window`, see orchestrator.ranking.drift). The number
    crunching runs in a thread, so a worker's other activities keep their event loop."""
    if len(purchases) < 10 or not items:
        raise VersionError("not enough purchases to train on")
    active = await _active(engine)
    contest = await asyncio.to_thread(_contest, purchases, items, active, groups, bands)
    profile = await asyncio.to_thread(training_profile, purchases, window=drift_window)
    async with engine.begin() as conn:
        version = int(
            await conn.scalar(
                ranking_models.insert()
                .values(
                    source=source,
                    window_start=_aware(min(p.at for p in purchases)),
                    window_end=_aware(max(p.at for p in purchases)),
                    purchases=len(purchases),
                    items=len(items),
                    status="inactive" if contest.wins else "rejected",
                    reason=contest.reason,
                    metrics=contest.metrics,
                    card=contest.card,
                    artifact=contest.artifact,
                    profile=profile,
                )
                .returning(ranking_models.c.version)
            )
            or 0
        )
        if contest.wins:
            await make_active(conn, version, actor=actor, now=now or datetime.now(UTC),
                              how="trained: it won the gate")  # fmt: skip
    status = "active" if contest.wins else "rejected"
    return Trained(version, status, contest.reason, contest.metrics)


def _contest(
    purchases: Sequence[Purchase],
    items: dict[str, Item],
    active: tuple[int, HybridModel] | None,
    groups: Mapping[str, object] | None,
    bands: Sequence[float] | None,
) -> _Contest:
    """Whether a candidate beats popularity and the active version on held-out
    purchases, why, the figures, the card, and the final model trained on everything."""
    held = holdout(purchases)
    if not held.train or not held.relevant:
        raise VersionError("the purchases do not span enough time to hold any out")
    cutoff = max(p.at for p in held.train)
    size = len(items)
    settings = _tuned(held.train, items)
    trained = HybridModel.train(held.train, items, now=cutoff, settings=settings)
    scored = _scored(trained, held, size, cutoff)
    candidate = scored.values[DECIDING]
    popularity = Popularity(held.train, now=cutoff)
    baseline = evaluate(
        "popularity", lambda u, k: popularity.recommend(u, k, held.history[u]), held, size
    ).values[DECIDING]
    metrics: dict[str, Any] = {
        "measure": DECIDING,
        "candidate": candidate,
        "popularity": baseline,
        "holdout_users": len(held.relevant),
        "popularity_weight": settings.popularity_weight,
    }
    last = max(p.at for p in purchases)
    losses = [f"does not beat popularity ({baseline:.4f})"] if candidate <= baseline else []
    won = [f"beats popularity ({baseline:.4f})"]
    if active is not None:
        version, model = active
        if _aware(model.trained_until) > _aware(cutoff):
            # It saw the held-out purchases (it was trained on everything up to its own
            # time): the fair contest is its recipe, trained on what the candidate saw.
            model = HybridModel.train(held.train, items, now=cutoff, settings=model.settings)
        score = _score(model, held, size, cutoff)
        metrics["active"] = {"version": version, DECIDING: score}
        if candidate < score:
            losses.append(f"falls short of version {version} ({score:.4f})")
        elif _aware(last) < _aware(active[1].trained_until):
            losses.append(f"learnt from purchases older than version {version}'s")
        else:  # as good, and at least as fresh: the newer data goes live
            won.append(f"matches or beats version {version} ({score:.4f})")
    reason = f"{DECIDING} {candidate:.4f} " + " and ".join(losses or won)
    final = HybridModel.train(purchases, items, now=last, settings=settings)
    card = training_card(
        parameters=asdict(settings),
        users=len({p.user for p in purchases}),
        held_out=scored,
        cutoff=cutoff,
        passed=not losses,
        groups=groups,
        bands=bands,
    )
    return _Contest(not losses, reason, metrics, card, final.dump())


def _tuned(purchases: Sequence[Purchase], items: dict[str, Item]) -> Settings:
    inner = holdout(purchases)
    if not inner.train or not inner.relevant:
        return Settings()
    now = max(p.at for p in inner.train)

    def quality(weight: float) -> float:
        settings = Settings(popularity_weight=weight)
        model = HybridModel.train(inner.train, items, now=now, settings=settings)
        return _score(model, inner, len(items), now)

    return Settings(popularity_weight=max(POPULARITY_WEIGHTS, key=quality))


async def _active(engine: AsyncEngine) -> tuple[int, HybridModel] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(ranking_models.c.version, ranking_models.c.artifact).where(
                    ranking_models.c.status == "active"
                )
            )
        ).one_or_none()
    return (row.version, HybridModel.load(row.artifact)) if row else None


async def stored_model(conn: AsyncConnection, version: int) -> HybridModel:
    """Version `version` as trained, whatever its status."""
    blob = await conn.scalar(
        select(ranking_models.c.artifact).where(ranking_models.c.version == version)
    )
    if blob is None:
        raise VersionError(f"there is no version {version}")
    return await asyncio.to_thread(HybridModel.load, bytes(blob))


async def versions(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            ranking_models.c.version, ranking_models.c.created_at, ranking_models.c.source,
            ranking_models.c.window_start, ranking_models.c.window_end,
            ranking_models.c.purchases, ranking_models.c.status, ranking_models.c.reason,
        ).order_by(ranking_models.c.version)
    )  # fmt: skip
    return [dict(r._mapping) for r in rows]


_STORED_PURCHASES = text(
    f"""
    SELECT e.user_id, product ->> 'product_id' AS item, e.timestamp
    FROM {PURCHASE_LINES}
    WHERE e.event = ANY(:events) AND e.user_id IS NOT NULL
    """
)


async def stored_purchases(
    engine: AsyncEngine, events: Sequence[str]
) -> tuple[list[Purchase], dict[str, Item]]:
    """Purchases from the event store, and the catalogue's available items."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_STORED_PURCHASES, {"events": list(events)})).all()
        catalogue = (await conn.execute(select(catalog_items))).mappings().all()
    items = {
        row["id"]: Item(
            row["id"],
            " ".join(filter(None, (row["name"], row["category"], row["description"]))),
            float(row["price"] or 0),
        )
        for row in catalogue
        if row["available"]
    }
    purchases = [Purchase(user, item, at) for user, item, at in rows if item in items]
    return purchases, items
