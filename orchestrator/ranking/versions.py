"""Training a model version, deciding whether it goes live, and switching versions.

A candidate is first trained on all but the latest fifth of the purchases (by time)
and scored on that held-out fifth, beside popularity and the active version; it is
activated only if it beats both on NDCG@10. Either way it is then retrained on every
purchase and stored, so `activate VERSION` can switch to (or back to) any version.

How much popularity to mix in depends on how much co-occurrence there is to go on
(a small shop needs more): it is chosen on the latest fifth of the training part, so
the held-out purchases stay unseen until the comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.catalog import PURCHASE_LINES
from orchestrator.ranking.drift import training_profile
from orchestrator.ranking.evaluation import Split, evaluate, split
from orchestrator.ranking.model import HybridModel, Popularity, Settings
from orchestrator.ranking.retail import Item, Purchase
from orchestrator.tables import catalog_items, ranking_models

HOLDOUT = 0.2
DECIDING = "ndcg@10"
POPULARITY_WEIGHTS = (0.01, 0.1, 0.3, 1.0)


class VersionError(Exception):
    """There is no such version, or nothing to train on."""


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


def _score(model: HybridModel, held: Split, size: int, now: datetime) -> float:
    def recommend(user: str, k: int) -> list[str]:
        return model.recommend(held.history[user], k, now=now).items

    return evaluate("model", recommend, held, size).values[DECIDING]


async def train(
    engine: AsyncEngine,
    purchases: Sequence[Purchase],
    items: dict[str, Item],
    *,
    source: str,
    drift_window: timedelta = timedelta(days=7),
) -> Trained:
    """Train, compare, store; activate when the candidate wins. The number crunching
    runs in a thread, so a worker's other activities keep their event loop. The version
    keeps its training profile, which input drift is measured against (`drift_window`:
    `ranking.drift.window`, see orchestrator.ranking.drift)."""
    if len(purchases) < 10 or not items:
        raise VersionError("not enough purchases to train on")
    active = await _active(engine)
    wins, reason, metrics, final = await asyncio.to_thread(_contest, purchases, items, active)
    profile = await asyncio.to_thread(training_profile, purchases, window=drift_window)
    async with engine.begin() as conn:
        if wins:
            await conn.execute(
                update(ranking_models)
                .where(ranking_models.c.status == "active")
                .values(status="inactive")
            )
        version = await conn.scalar(
            ranking_models.insert()
            .values(
                source=source,
                window_start=_aware(min(p.at for p in purchases)),
                window_end=_aware(max(p.at for p in purchases)),
                purchases=len(purchases),
                items=len(items),
                status="active" if wins else "rejected",
                reason=reason,
                metrics=metrics,
                artifact=final,
                profile=profile,
            )
            .returning(ranking_models.c.version)
        )
    return Trained(int(version or 0), "active" if wins else "rejected", reason, metrics)


def _contest(
    purchases: Sequence[Purchase],
    items: dict[str, Item],
    active: tuple[int, HybridModel] | None,
) -> tuple[bool, str, dict[str, Any], bytes]:
    """Whether a candidate beats popularity and the active version on held-out
    purchases, why, the figures, and the final model trained on everything."""
    held = holdout(purchases)
    if not held.train or not held.relevant:
        raise VersionError("the purchases do not span enough time to hold any out")
    cutoff = max(p.at for p in held.train)
    size = len(items)
    settings = _tuned(held.train, items)
    trained = HybridModel.train(held.train, items, now=cutoff, settings=settings)
    candidate = _score(trained, held, size, cutoff)
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
    beaten = [("popularity", baseline)]
    if active is not None:
        version, model = active
        metrics["active"] = {"version": version, DECIDING: _score(model, held, size, cutoff)}
        beaten.append((f"version {version}", metrics["active"][DECIDING]))
    losses = [f"{name} ({value:.4f})" for name, value in beaten if candidate <= value]
    reason = (
        f"{DECIDING} {candidate:.4f} does not beat " + " and ".join(losses)
        if losses
        else f"{DECIDING} {candidate:.4f} beats "
        + " and ".join(f"{n} ({v:.4f})" for n, v in beaten)
    )
    last = max(p.at for p in purchases)
    final = HybridModel.train(purchases, items, now=last, settings=settings)
    return not losses, reason, metrics, final.dump()


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


async def activate(engine: AsyncEngine, version: int) -> None:
    """Make `version` the live one (a rollback is activating an older version)."""
    async with engine.begin() as conn:
        exists = await conn.scalar(select(func.count()).where(ranking_models.c.version == version))
        if not exists:
            raise VersionError(f"there is no version {version}")
        await conn.execute(
            update(ranking_models)
            .where(ranking_models.c.status == "active", ranking_models.c.version != version)
            .values(status="inactive")
        )
        await conn.execute(
            update(ranking_models)
            .where(ranking_models.c.version == version)
            .values(status="active")
        )


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
