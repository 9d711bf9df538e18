"""The active model version (and a canary beside it), served in process behind the
channels' `Ranker` seam.

Each worker checks which versions serve at most every `check_every` seconds, so
`orchestrator ranking activate`, `canary`, `promote` and `rollback` (or a training run
that wins) reach running workers without a restart; while one request loads a new
version, the others answer from the versions loaded before. A user drawn into the
canary (`rollout.Canary`) gets its answer; an active version the guard marked degraded
answers nobody (the baseline does, and says why), while the canary goes on serving its
share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.ranking import (
    HttpRanker,
    Ranker,
    Ranking,
    RankingError,
    RankRequest,
    Recommender,
    ScoredItem,
)
from orchestrator.catalog import CatalogCache, purchase_history
from orchestrator.profiles import load_traits
from orchestrator.ranking.config import RankingConfig
from orchestrator.ranking.diversity import rerankers_for
from orchestrator.ranking.model import HybridModel
from orchestrator.ranking.rollout import Canary
from orchestrator.routing import Clock
from orchestrator.tables import ranking_models


class BuiltInRanker:
    def __init__(
        self, engine: AsyncEngine, *, events: Sequence[str], check_every: float = 30.0
    ) -> None:
        self.engine, self.events, self.check_every = engine, list(events), check_every
        self.version: int | None = None  # the active one
        self.degraded: str | None = None  # why the active version answers nobody
        self.canary: Canary | None = None
        self.models: dict[int, HybridModel] = {}  # the active version and the canary's
        self._checked = float("-inf")
        self._lock = asyncio.Lock()

    async def rank(self, request: RankRequest) -> Ranking:
        version, model = await self.serving(request.user_id)
        history = await purchase_history(self.engine, request.user_id, self.events)
        scores = model.recommend(history, request.k, request.exclude, now=datetime.now(UTC))
        pairs = zip(scores.items, scores.scores, strict=True)
        return Ranking(
            items=[ScoredItem(item_id=item, score=score) for item, score in pairs],
            confidence=scores.confidence,
            model=f"hybrid-v{version}",
        )

    async def serving(self, user_id: str) -> tuple[int, HybridModel]:
        """The version that answers this user (the canary's when drawn into it), as
        loaded when asked, whatever a reload in the meantime changes."""
        await self._refresh()
        models, canary, version, degraded = self.models, self.canary, self.version, self.degraded
        if canary is not None and canary.drawn(user_id):
            traits = None
            if canary.segment is not None:  # only a drawn user's traits are read
                async with self.engine.connect() as conn:
                    traits = await load_traits(conn, user_id)
            if canary.serves(user_id, traits):
                return canary.version, models[canary.version]
        if version is None:
            raise RankingError("no ranking model version is active", code="no_model")
        if degraded is not None:
            raise RankingError(f"version {version} is degraded ({degraded})", code="degraded")
        return version, models[version]

    async def _refresh(self) -> None:
        if time.monotonic() - self._checked >= self.check_every:
            if self._lock.locked() and self._checked > float("-inf"):
                return  # another request is loading: answer from what is loaded meanwhile
            async with self._lock:
                if time.monotonic() - self._checked >= self.check_every:
                    await self._reload()

    async def _reload(self) -> None:
        columns = ranking_models.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(columns.version, columns.status, columns.degraded_reason,
                           columns.canary_share, columns.canary_segment, columns.canary_since)
                    .where(columns.status.in_(("active", "canary")))
                )
            ).all()  # fmt: skip
            models = {}
            for row in rows:
                model = self.models.get(row.version)
                if model is None:
                    blob = (
                        await conn.execute(
                            select(columns.artifact).where(columns.version == row.version)
                        )
                    ).scalar_one()
                    model = await asyncio.to_thread(HybridModel.load, bytes(blob))
                models[row.version] = model
        active = next((r for r in rows if r.status == "active"), None)
        canary = next((r for r in rows if r.status == "canary"), None)
        self.models = models
        self.version = active.version if active else None
        self.degraded = active.degraded_reason if active else None
        self.canary = (
            Canary(canary.version, canary.canary_share, canary.canary_segment,
                   canary.canary_since)
            if canary else None
        )  # fmt: skip
        self._checked = time.monotonic()


def build_recommender(
    ranking: RankingConfig, *, engine: AsyncEngine, http: httpx.AsyncClient, clock: Clock
) -> Recommender:
    """The recommender a process uses: the catalogue and popularity from Postgres, and
    the built-in model's active version or an external model, as configured."""
    catalog = CatalogCache(
        engine,
        events=ranking.popularity_events,
        window=ranking.popularity_window,
        refresh_every=ranking.refresh_every,
        clock=clock,
    )
    deadline = ranking.deadline_ms / 1000
    model: Ranker | None = None
    if ranking.url:
        model = HttpRanker(url=ranking.url, client=http, timeout=deadline)
    elif ranking.builtin:
        model = BuiltInRanker(engine, events=ranking.popularity_events)
    return Recommender(
        catalog=catalog,
        model=model,
        deadline=deadline,
        min_confidence=ranking.min_confidence,
        personalization_trait=ranking.personalization_trait,
        exploration=ranking.exploration,
        rerankers=rerankers_for(ranking),
    )
