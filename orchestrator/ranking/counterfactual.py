"""What a model version would have earned on the slots that logged messages filled.

Each usable impression is one delivered, model-filled message whose content source
logged its shown items: position, propensity (the chance the logging policy, which
explored with `ranking.exploration`, put that item there), and for an explored
position the model's item it displaced; plus the exploration pool and rate. From
those the logging policy's chance of any (item, position) follows (`Impression.
logging_probability`), and the item-position IPS estimate (`offpolicy.ranking_ips`)
gives the version's expected clicks on recommended items per message: per shown item
the version puts at the same position, its click weighted by 1 / propensity.

It is unbiased when a click depends only on the item and its position, and when the
logging policy could have shown every (item, position) the version fills: its top
item at the top (never explored), the rest among the model's ranking or the pool.
Pairs it could not have shown count for nothing, so with exploration off (or a
version far from the logged model) the estimate is too low; `supported` says how
many of the version's pairs could count.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from orchestrator.ranking.model import History, HybridModel
from orchestrator.reports.offpolicy import (
    CONFIDENCE,
    RESAMPLES,
    OffPolicyEstimate,
    ranking_ips,
    ranking_target_probability,
)

# Items asked of the version beyond k, in case some are no longer available.
SPARE = 50


@dataclass(frozen=True, slots=True)
class ShownItem:
    item_id: str
    position: int
    propensity: float
    explored: bool
    replaced: str | None  # the model's item an explored one displaced


@dataclass(frozen=True, slots=True)
class Impression:
    """One model-filled message as logged, and the items clicked in it."""

    message_id: str
    user_id: str
    at: datetime
    exploration: float
    shown: tuple[ShownItem, ...]
    pool: tuple[str, ...]
    clicked: frozenset[str]

    @classmethod
    def logged(
        cls,
        *,
        message_id: str,
        user_id: str,
        at: datetime,
        source: Mapping[str, Any],
        clicked: Collection[str],
    ) -> Impression | None:
        """From a message's `content_source`; None unless the model filled it and its
        shown items were logged."""
        shown = source.get("shown")
        if source.get("source") != "model" or not shown:
            return None
        return cls(
            message_id=message_id,
            user_id=user_id,
            at=at,
            exploration=float(source.get("exploration") or 0.0),
            shown=tuple(
                ShownItem(
                    item_id=s["item_id"],
                    position=int(s["position"]),
                    propensity=float(s["propensity"]),
                    explored=bool(s.get("explored")),
                    replaced=s.get("replaced"),
                )
                for s in sorted(shown, key=lambda s: s["position"])
            ),
            pool=tuple(source.get("pool") or ()),
            clicked=frozenset(clicked),
        )

    @property
    def ranked(self) -> list[str]:
        """The model's items before exploration, best first."""
        return [s.replaced or s.item_id for s in self.shown]

    def logging_probability(self, item: str, position: int) -> float:
        """The chance the logging policy showed `item` at `position` (see
        `channels.ranking.explore`)."""
        ranked = self.ranked
        if not 0 <= position < len(ranked):
            return 0.0
        explorable = 0 < position <= len(self.pool) and self.exploration > 0
        if item == ranked[position]:
            return 1 - self.exploration if explorable else 1.0
        if explorable and item in self.pool:
            return self.exploration / len(self.pool)
        return 0.0


def target_ranking(
    model: HybridModel, history: History, k: int, available: Collection[str], at: datetime
) -> list[str]:
    """What the version ranks for a user with `history` at `at`: its top k available
    items (what it bought is never recommended back)."""
    scores = model.recommend(history, k + SPARE, now=at)
    return [item for item in scores.items if item in available][:k]


@dataclass(frozen=True, slots=True)
class LogEvaluation:
    impressions: int  # usable
    exploring: int  # of those, logged with exploration on
    shown: int  # items shown in them
    clicks: int  # of those, clicked
    observed: float | None  # clicks on recommended items per message, as logged
    matched: int  # shown items the version puts at the same position
    target_slots: int  # (item, position) pairs the version fills on these impressions
    supported: int  # of those, pairs the logging policy could have shown
    estimate: OffPolicyEstimate  # the version's clicks per message


def evaluate_impressions(
    impressions: Sequence[Impression],
    rankings: Mapping[str, Sequence[str]],
    *,
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> LogEvaluation:
    """The ranking IPS estimate of the target `rankings` (message id -> items, best
    first) over the impressions, beside what the logged policy got."""
    keys, items, positions, propensities, rewards = [], [], [], [], []
    for n, impression in enumerate(impressions):
        for s in impression.shown:
            keys.append(n)
            items.append(s.item_id)
            positions.append(s.position)
            propensities.append(s.propensity)
            rewards.append(1.0 if s.item_id in impression.clicked else 0.0)
    by_message: dict[Hashable, Sequence[Hashable]] = {k: v for k, v in rankings.items()}
    target = ranking_target_probability(
        impression=[impressions[n].message_id for n in keys],
        item=items,
        position=positions,
        rankings=by_message,
    )
    estimate = ranking_ips(
        impression=np.array(keys, dtype=np.int64),
        logging_probability=propensities,
        target_probability=target,
        reward=rewards,
        rng=rng,
        resamples=resamples,
        confidence=confidence,
    )
    slots = [
        impression.logging_probability(item, position)
        for impression in impressions
        for position, item in enumerate(
            rankings.get(impression.message_id, ())[: len(impression.shown)]
        )
    ]
    return LogEvaluation(
        impressions=len(impressions),
        exploring=sum(1 for i in impressions if i.exploration > 0),
        shown=len(items),
        clicks=int(sum(rewards)),
        observed=sum(rewards) / len(impressions) if impressions else None,
        matched=int(target.sum()),
        target_slots=len(slots),
        supported=sum(1 for p in slots if p > 0),
        estimate=estimate,
    )
