"""The active model version, served in process behind the channels' `Ranker` seam.

Each worker checks which version is active at most every `check_every` seconds and
loads a new one in the background of that check, so `orchestrator ranking activate`
(or a training run that wins) reaches running workers without a restart.
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
from orchestrator.ranking.model import HybridModel
from orchestrator.routing import Clock
from orchestrator.tables import ranking_models
from orchestrator.workspace import RankingConfig


class BuiltInRanker:
    def __init__(
        self, engine: AsyncEngine, *, events: Sequence[str], check_every: float = 30.0
    ) -> None:
        self.engine, self.events, self.check_every = engine, list(events), check_every
        self.version: int | None = None
        self.model: HybridModel | None = None
        self._checked = float("-inf")
        self._lock = asyncio.Lock()

    async def rank(self, request: RankRequest) -> Ranking:
        model = await self._current()
        history = await purchase_history(self.engine, request.user_id, self.events)
        scores = model.recommend(history, request.k, request.exclude, now=datetime.now(UTC))
        pairs = zip(scores.items, scores.scores, strict=True)
        return Ranking(
            items=[ScoredItem(item_id=item, score=score) for item, score in pairs],
            confidence=scores.confidence,
            model=f"hybrid-v{self.version}",
        )

    async def _current(self) -> HybridModel:
        if time.monotonic() - self._checked >= self.check_every:
            async with self._lock:
                if time.monotonic() - self._checked >= self.check_every:
                    await self._reload()
        if self.model is None:
            raise RankingError("no ranking model version is active")
        return self.model

    async def _reload(self) -> None:
        async with self.engine.connect() as conn:
            active = await conn.scalar(
                select(ranking_models.c.version).where(ranking_models.c.status == "active")
            )
            if active is not None and active != self.version:
                blob = (
                    await conn.execute(
                        select(ranking_models.c.artifact).where(ranking_models.c.version == active)
                    )
                ).scalar_one()
                self.model = await asyncio.to_thread(HybridModel.load, bytes(blob))
            elif active is None:
                self.model = None
        self.version = active
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
    )
