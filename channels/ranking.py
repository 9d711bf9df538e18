"""Ranked content for messages: one interface to the ranking model, a deadline, and a
non-personalised baseline behind it.

    Ranker        rank(RankRequest) -> Ranking: the model (built in, or over HTTP)
    Catalog       the items a template can show, popularity, what a user has bought
    Recommender   asks the model within its deadline; a timeout, an error, low
                  confidence or a user who opted out of personalisation gets the
                  popularity baseline, and the answer says which source filled it

RankingError
└── raised by a Ranker that could not answer (the Recommender falls back)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


class RankingError(Exception):
    """The ranking model could not answer."""


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


class Filled(BaseModel):
    """The recommendations a message shows, and where they came from."""

    model_config = ConfigDict(frozen=True)

    items: list[dict[str, Any]]
    source: Literal["model", "baseline"]
    reason: str
    model: str | None = None
    confidence: float | None = None

    def record(self) -> dict[str, Any]:
        """What the message stores about its content (not the items themselves)."""
        return {
            "source": self.source,
            "reason": self.reason,
            "model": self.model,
            "confidence": self.confidence,
            "items": [item["id"] for item in self.items],
        }


class Recommender:
    """Fills a message's recommendations from the model, or the baseline when it must."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        model: Ranker | None = None,
        deadline: float = 0.008,
        min_confidence: float = 0.2,
        personalization_trait: str = "personalization",
    ) -> None:
        self.catalog, self.model = catalog, model
        self.deadline, self.min_confidence = deadline, min_confidence
        self.personalization_trait = personalization_trait
        self._abandoned: set[asyncio.Future[Ranking]] = set()

    async def recommend(
        self,
        user_id: str,
        traits: Mapping[str, Any],
        wanted: Recommendations,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> Filled:
        await self.catalog.ready()
        exclude = await self.catalog.purchased(user_id) if wanted.exclude_purchased else set()
        if traits.get(self.personalization_trait) is False:
            return self._baseline(wanted.k, exclude, "the user opted out of personalisation")
        if self.model is None:
            return self._baseline(wanted.k, exclude, "no ranking model is configured")
        request = RankRequest(
            user_id=user_id,
            slot=wanted.slot,
            k=wanted.k,
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
                wanted.k, exclude, f"the model did not answer within {self.deadline * 1000:g} ms"
            )
        try:
            ranking = asking.result()
        except Exception as exc:  # any failure of the model means the baseline answers
            elapsed = (time.perf_counter() - started) * 1000
            return self._baseline(
                wanted.k, exclude, f"no answer from the model after {elapsed:.1f} ms: {exc}"
            )
        if ranking.confidence < self.min_confidence:
            return self._baseline(
                wanted.k,
                exclude,
                f"the model's confidence {ranking.confidence:.2f} is under {self.min_confidence}",
            )
        wanted_ids = [i.item_id for i in ranking.items if i.item_id not in exclude]
        items = self.catalog.describe(wanted_ids)[: wanted.k]
        reason = "ranked by the model"
        if len(items) < wanted.k:
            # The model knew too few available items: top up with popular ones.
            shown = exclude | {item["id"] for item in items}
            extra = self.catalog.popular(wanted.k - len(items), shown)
            items += self.catalog.describe([i.item_id for i in extra])
            reason = f"ranked by the model, {len(extra)} popular item(s) added"
        return Filled(
            items=items,
            source="model",
            reason=reason,
            model=ranking.model,
            confidence=ranking.confidence,
        )

    def _forget(self, late: asyncio.Future[Ranking]) -> None:
        self._abandoned.discard(late)
        if not late.cancelled():
            late.exception()  # retrieved, so asyncio does not log it as lost

    def _baseline(self, k: int, exclude: Collection[str], reason: str) -> Filled:
        popular = self.catalog.popular(k, exclude)
        return Filled(
            items=self.catalog.describe([i.item_id for i in popular]),
            source="baseline",
            reason=reason,
            model="popularity",
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
