"""Ranked content for messages: one interface to the ranking model, a deadline, and a
non-personalised baseline behind it.

    Ranker        rank(RankRequest) -> Ranking: the model (built in, or over HTTP)
    Catalog       the items a template can show, popularity, what a user has bought
    Recommender   asks the model within its deadline; a timeout, an error, low
                  confidence or a user who opted out of personalisation gets the
                  popularity baseline, and the answer says which source filled it
    Reranker      a stage after the model, per slot (diversity): chooses the k items
                  from more of the model's candidates, before exploration
    explore       with a small probability per position after the first, shows an
                  item the model ranked lower instead, and logs each shown item's
                  propensity, so logged messages can evaluate other rankings offline

RankingError
└── raised by a Ranker that could not answer (the Recommender falls back)
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from channels.metrics import counted_ranking


class Recommendations(BaseModel):
    """What a send step asks for: `content: {recommendations: {slot, k, exclude_purchased}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$", description="What the items are for, e.g. cart_upsell"
    )
    k: int = Field(default=4, ge=1, le=50)
    exclude_purchased: bool = Field(
        default=False, description="Leave out what the user has already bought"
    )


class RankRequest(BaseModel):
    """The question a channel asks: what should this user see in this slot?"""

    model_config = ConfigDict(frozen=True)

    user_id: str
    slot: str
    k: int = Field(ge=1, le=100)
    exclude: list[str] = Field(default_factory=list, description="Item ids not to return")
    context: dict[str, Any] = Field(default_factory=dict, description="e.g. the triggering event")


class ScoredItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    item_id: str
    score: float


class Ranking(BaseModel):
    """A model's answer: items best first, and how sure it is (0 to 1)."""

    model_config = ConfigDict(frozen=True)

    items: list[ScoredItem]
    confidence: float = Field(ge=0, le=1)
    model: str = Field(description="Which model (and version) answered")


# Why the baseline filled a message, as the monitoring counts it.
Fallback = Literal["opted_out", "no_model", "timeout", "error", "degraded", "low_confidence"]


class RankingError(Exception):
    """The ranking model could not answer; `code` says why in a word the monitoring
    counts (`error`, or e.g. `degraded` for a model the guard took out of service)."""

    def __init__(self, message: str, *, code: Fallback = "error") -> None:
        super().__init__(message)
        self.code: Fallback = code


class Ranker(Protocol):
    async def rank(self, request: RankRequest) -> Ranking: ...


class Catalog(Protocol):
    """The items templates show, as dictionaries (id, name, url, image, price, ...)."""

    async def ready(self) -> None:
        """Called before each use: load (or refresh) what the methods below read."""
        ...

    def describe(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The available items among `item_ids`, in the given order."""
        ...

    def popular(self, k: int, exclude: Collection[str]) -> list[ScoredItem]:
        """The baseline: the most popular available items, best first."""
        ...

    async def purchased(self, user_id: str) -> set[str]:
        """Item ids the user has bought."""
        ...


class Reranker(Protocol):
    """Re-ranks a model's candidates for one slot (e.g. for diversity)."""

    def candidates(self, k: int) -> int:
        """How many of the model's items to choose k from."""
        ...

    def settings(self) -> dict[str, Any]:
        """What the message logs about this stage (`content_source.diversity`)."""
        ...

    def rerank(
        self,
        ranked: Sequence[ScoredItem],
        items: Mapping[str, Mapping[str, Any]],
        k: int,
        *,
        chosen: Sequence[ScoredItem] = (),
    ) -> list[ScoredItem]:
        """Up to k of `ranked` (described in `items`), to follow those `chosen`."""
        ...


class Shown(BaseModel):
    """One shown item: where, its score, and the chance the logging policy put it there."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    position: int = Field(ge=0, description="0 is the top")
    score: float
    propensity: float = Field(gt=0, le=1)
    explored: bool = False
    replaced: str | None = Field(default=None, description="The model's item it displaced")


# Items the model is asked for beyond k when exploring, and the most an exploration
# pool holds (the model's items beyond the top k, else popular catalogue items).
EXPLORATION_POOL = 20


def explore(
    ranked: Sequence[ScoredItem],
    pool: Sequence[ScoredItem],
    *,
    rate: float,
    rng: random.Random,
) -> list[Shown]:
    """The items to show, best first, each with the probability that this policy put it
    at its position: the top item always stays; each later position j independently
    shows, with probability `rate`, the j-th item of a uniformly shuffled `pool` (so
    any pool item lands there with probability rate / len(pool)), else the ranked item
    (probability 1 - rate). Positions past the pool's size are never explored. `pool`
    must not share items with `ranked`."""
    order = list(pool)
    rng.shuffle(order)
    shown = []
    for position, item in enumerate(ranked):
        candidate = order[position - 1] if 0 < position <= len(order) and rate > 0 else None
        if candidate is not None and rng.random() < rate:
            chosen, propensity, replaced = candidate, rate / len(order), item.item_id
        else:
            chosen, propensity, replaced = item, 1.0 if candidate is None else 1 - rate, None
        shown.append(
            Shown(
                item_id=chosen.item_id,
                position=position,
                score=chosen.score,
                propensity=propensity,
                explored=replaced is not None,
                replaced=replaced,
            )
        )
    return shown


class Filled(BaseModel):
    """The recommendations a message shows, and where they came from."""

    model_config = ConfigDict(frozen=True)

    items: list[dict[str, Any]]
    source: Literal["model", "baseline"]
    reason: str
    fallback: str | None = Field(default=None, description="Why the baseline filled it")
    model: str | None = None
    confidence: float | None = None
    slot: str | None = None
    exploration: float = Field(default=0.0, description="The exploration rate in force")
    shown: list[Shown] = Field(default_factory=list, description="`items`, as logged")
    pool: list[str] = Field(default_factory=list, description="What exploration drew from")
    diversity: dict[str, Any] | None = Field(
        default=None, description="The slot's diversity settings, when they re-ranked it"
    )

    def record(self) -> dict[str, Any]:
        """What the message stores about its content (not the items themselves): the
        source, and per shown item its position, score and propensity, so that the
        log can evaluate other rankings (`orchestrator ranking evaluate-logs`)."""
        return {
            "source": self.source,
            "reason": self.reason,
            "fallback": self.fallback,
            "model": self.model,
            "confidence": self.confidence,
            "items": [item["id"] for item in self.items],
            "slot": self.slot,
            "exploration": self.exploration,
            "shown": [s.model_dump(exclude_none=True) for s in self.shown],
            "pool": self.pool,
            **({"diversity": self.diversity} if self.diversity is not None else {}),
        }


class Recommender:
    """Fills a message's recommendations from the model, or the baseline when it must;
    with `exploration` above 0, model-filled messages sometimes show lower-ranked items
    (see `explore`), drawn by a generator seeded from the message id, so that a retry
    shows the same items. A slot in `rerankers` has its model-filled lists chosen by
    that stage from more of the model's items, before exploration."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        model: Ranker | None = None,
        deadline: float = 0.008,
        min_confidence: float = 0.2,
        personalization_trait: str = "personalization",
        exploration: float = 0.0,
        rerankers: Mapping[str, Reranker] | None = None,
    ) -> None:
        if not 0 <= exploration <= 0.5:
            raise ValueError("exploration is a probability of at most 0.5")
        self.catalog, self.model = catalog, model
        self.rerankers: Mapping[str, Reranker] = dict(rerankers or {})
        self.deadline, self.min_confidence = deadline, min_confidence
        self.personalization_trait = personalization_trait
        self.exploration = exploration
        self._abandoned: set[asyncio.Future[Ranking]] = set()

    @counted_ranking
    async def recommend(
        self,
        user_id: str,
        traits: Mapping[str, Any],
        wanted: Recommendations,
        *,
        context: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> Filled:
        """The items for one message. Only a message (`message_id`, which seeds the draws,
        so a retry shows the same items) explores: its content, and so what it showed
        with which chance, is logged; an answer to anyone else is the model's own."""
        exploration = self.exploration if message_id is not None else 0.0
        await self.catalog.ready()
        exclude = await self.catalog.purchased(user_id) if wanted.exclude_purchased else set()
        if traits.get(self.personalization_trait) is False:
            return self._baseline(
                wanted, exclude, "the user opted out of personalisation", "opted_out"
            )
        if self.model is None:
            return self._baseline(wanted, exclude, "no ranking model is configured", "no_model")
        reranker = self.rerankers.get(wanted.slot)
        # Exploring draws from what the model ranks below the top k, and a re-ranking
        # stage chooses from more than k: ask for more.
        asked = wanted.k + EXPLORATION_POOL if exploration else wanted.k
        if reranker is not None:
            asked = max(asked, reranker.candidates(wanted.k))
        request = RankRequest(
            user_id=user_id,
            slot=wanted.slot,
            k=min(100, asked),
            exclude=sorted(exclude),
            context=dict(context or {}),
        )
        started = time.perf_counter()
        asking = asyncio.ensure_future(self.model.rank(request))
        # Wait, but never cancel: a request cancelled inside httpx can leave its pool
        # holding a dead connection, and enough of those make the model unreachable.
        # A late answer is dropped; the ranker's own timeout ends the request.
        done, _ = await asyncio.wait({asking}, timeout=self.deadline)
        if not done:
            self._abandoned.add(asking)
            asking.add_done_callback(self._forget)
            return self._baseline(
                wanted,
                exclude,
                f"the model did not answer within {self.deadline * 1000:g} ms",
                "timeout",
            )
        try:
            ranking = asking.result()
        except Exception as exc:  # any failure of the model means the baseline answers
            elapsed = (time.perf_counter() - started) * 1000
            return self._baseline(
                wanted,
                exclude,
                f"no answer from the model after {elapsed:.1f} ms: {exc}",
                exc.code if isinstance(exc, RankingError) else "error",
            )
        if ranking.confidence < self.min_confidence:
            return self._baseline(
                wanted,
                exclude,
                f"the model's confidence {ranking.confidence:.2f} is under {self.min_confidence}",
                "low_confidence",
            )
        scores: dict[str, float] = {}
        for scored in ranking.items:
            if scored.item_id not in exclude:
                scores.setdefault(scored.item_id, scored.score)
        described = {item["id"]: item for item in self.catalog.describe(list(scores))}
        ranked = [ScoredItem(item_id=i, score=s) for i, s in scores.items() if i in described]
        if reranker is not None:
            top = reranker.rerank(ranked, described, wanted.k)
            picked = {s.item_id for s in top}
            pool = [s for s in ranked if s.item_id not in picked][:EXPLORATION_POOL]
        else:
            top, pool = ranked[: wanted.k], ranked[wanted.k : wanted.k + EXPLORATION_POOL]
        reason = "ranked by the model"
        if len(top) < wanted.k:
            # The model knew too few available items: top up with popular ones (chosen
            # by the slot's stage too, so its limits hold).
            wanting = wanted.k - len(top)
            asking_for = reranker.candidates(wanting) if reranker is not None else wanting
            extra = self._available(asking_for, exclude, [*top, *pool], described)
            if reranker is not None:
                extra = reranker.rerank(extra, described, wanting, chosen=top)
            top += extra[:wanting]
            reason = f"ranked by the model, {len(extra[:wanting])} popular item(s) added"
        if reranker is not None:
            settings = ", ".join(f"{key} {value}" for key, value in reranker.settings().items())
            reason += f", re-ranked for diversity ({settings})"
        if exploration and not pool:
            pool = self._available(EXPLORATION_POOL, exclude, top, described)
        seed = hashlib.sha256((message_id or "").encode()).digest()[:8]
        shown = explore(top, pool, rate=exploration, rng=random.Random(int.from_bytes(seed)))
        return Filled(
            items=[described[s.item_id] for s in shown],
            source="model",
            reason=reason,
            model=ranking.model,
            confidence=ranking.confidence,
            slot=wanted.slot,
            exploration=exploration,
            shown=shown,
            pool=[p.item_id for p in pool] if exploration else [],
            diversity=reranker.settings() if reranker is not None else None,
        )

    def _available(
        self,
        k: int,
        exclude: Collection[str],
        taken: Sequence[ScoredItem],
        described: dict[str, dict[str, Any]],
    ) -> list[ScoredItem]:
        """Up to k popular items, not excluded nor taken, added to `described`."""
        popular = self.catalog.popular(k, {*exclude, *(t.item_id for t in taken)})
        described.update((i["id"], i) for i in self.catalog.describe([p.item_id for p in popular]))
        return [p for p in popular if p.item_id in described]

    def _forget(self, late: asyncio.Future[Ranking]) -> None:
        self._abandoned.discard(late)
        if not late.cancelled():
            late.exception()  # retrieved, so asyncio does not log it as lost

    def _baseline(
        self, wanted: Recommendations, exclude: Collection[str], reason: str, why: Fallback
    ) -> Filled:
        popular = self.catalog.popular(wanted.k, exclude)
        items = self.catalog.describe([i.item_id for i in popular])
        scores = {p.item_id: p.score for p in popular}
        return Filled(
            items=items,
            source="baseline",
            reason=reason,
            fallback=why,
            model="popularity",
            slot=wanted.slot,
            shown=[
                Shown(item_id=item["id"], position=n, score=scores[item["id"]], propensity=1.0)
                for n, item in enumerate(items)
            ],
        )


class HttpRanker:
    """An external model: `POST url` with a RankRequest, answered with a Ranking."""

    def __init__(self, *, url: str, client: httpx.AsyncClient, timeout: float) -> None:
        self.url, self.client, self.timeout = url, client, timeout

    async def rank(self, request: RankRequest) -> Ranking:
        try:
            response = await self.client.post(
                self.url, content=request.model_dump_json(), timeout=self.timeout,
                headers={"content-type": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise RankingError(f"could not reach {self.url}: {exc!r}") from exc
        if response.status_code != 200:
            raise RankingError(f"{self.url} answered {response.status_code}")
        try:
            return Ranking.model_validate_json(response.content)
        except ValidationError as exc:
            raise RankingError(
                f"{self.url} answered something that is not a ranking: {exc}"
            ) from None
