"""Input drift of the live ranking model: how far live traffic has moved from what the
active version was trained on.

When a version is trained, a profile of its purchases is stored with it:

    items     every item bought in training, in one of ~10 bins of equal training mass
              (ranked by training popularity); an 11th bin, "unseen", holds what the
              version never saw bought (none in training, by definition)
    history   users' history lengths (distinct items bought), in log-spaced bins
              1, 2, 3-4, 5-8, ... 129+, over the users active in the last `window` of
              training with their distinct items up to its end

Live traffic is binned the same way: the purchases of the last `window` in the event
store (items of the catalogue's available ones, as training keeps), and the users active
in that window with their distinct items up to now. Each pair of distributions is
compared by the population stability index, PSI = sum((live - train) * ln(live / train))
over the bins, with every share floored at `FLOOR` (0.001) so an empty bin counts as
rare rather than impossible. The unseen share is the live purchases of items the version
never saw bought. By convention PSI under 0.1 is no real change, 0.1 to 0.25 a moderate
one, over 0.25 a major one. With the training unseen bin empty, the unseen bin alone puts
item PSI at about 0.2 once 5% of live purchases are of unseen items.

Too few live purchases (`min_purchases`) is "not enough traffic", never drift: with n
purchases over k bins, PSI from chance alone is about (k - 1) / n.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.catalog import PURCHASE_LINES
from orchestrator.ranking.retail import Purchase
from orchestrator.tables import ranking_models

if TYPE_CHECKING:
    from orchestrator.ranking.config import DriftConfig

ITEM_BINS = 10
# Lower bounds of the history-length bins: 1, 2, 3-4, 5-8, ..., 129 and more.
HISTORY_EDGES = (1, 2, 3, 5, 9, 17, 33, 65, 129)
FLOOR = 0.001
PROFILE_FORMAT = 1

Status = Literal[
    "drifted", "steady", "not enough traffic", "no training profile", "no active version"
]


def training_profile(purchases: Sequence[Purchase], *, window: timedelta) -> dict[str, Any]:
    """The profile stored with a version trained on `purchases`."""
    counts = Counter(p.item for p in purchases)
    total = sum(counts.values())
    ranked = sorted(counts, key=lambda item: (-counts[item], item))
    raw: dict[str, int] = {}
    before = 0
    for item in ranked:
        # by the middle of the item's mass, so a very popular item sits in one bin
        raw[item] = min(ITEM_BINS - 1, int((before + counts[item] / 2) * ITEM_BINS / total))
        before += counts[item]
    # a few items heavy enough to span several bins leave some empty: number the rest
    used = {b: n for n, b in enumerate(sorted(set(raw.values())))}
    bins = {item: used[b] for item, b in raw.items()}
    item_counts = [0] * (len(used) + 1)  # the last is "unseen"
    for item, n in counts.items():
        item_counts[bins[item]] += n
    end = max(p.at for p in purchases)
    active = {p.user for p in purchases if p.at > end - window}
    distinct: dict[str, set[str]] = defaultdict(set)
    for p in purchases:
        if p.user in active:
            distinct[p.user].add(p.item)
    return {
        "format": PROFILE_FORMAT,
        "window_seconds": window.total_seconds(),
        "purchases": total,
        "items": bins,
        "item_counts": item_counts,
        "history_edges": list(HISTORY_EDGES),
        "history_counts": history_counts((len(s) for s in distinct.values()), HISTORY_EDGES),
        "users": len(distinct),
    }


def history_counts(lengths: Any, edges: Sequence[int]) -> list[int]:
    """How many of `lengths` fall in each bin starting at `edges`."""
    counts = [0] * len(edges)
    for n in lengths:
        if n >= edges[0]:
            counts[bisect_right(edges, n) - 1] += 1
    return counts


def psi(expected: Sequence[int], actual: Sequence[int], *, floor: float = FLOOR) -> float:
    """Population stability index of `actual` against `expected` (counts per bin)."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        raise ValueError("PSI needs counts on both sides")
    value = 0.0
    for e, a in zip(expected, actual, strict=True):
        e_share, a_share = max(e / e_total, floor), max(a / a_total, floor)
        value += (a_share - e_share) * math.log(a_share / e_share)
    return value


@dataclass(frozen=True)
class Figure:
    name: str  # item_psi | history_psi | unseen_share
    value: float | None  # None: too little to go on (see `note`)
    threshold: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Drift:
    status: Status
    summary: str
    version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    figures: list[Figure] = field(default_factory=list)
    # what the figures rest on: live purchases and users, purchases of unseen items and
    # of items outside the catalogue (left out), and the training profile's own counts
    counts: dict[str, int] = field(default_factory=dict)
    bins: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return self.status == "drifted"

    def as_json(self) -> dict[str, Any]:
        found = asdict(self)
        found["since"] = self.since.isoformat() if self.since else None
        found["until"] = self.until.isoformat() if self.until else None
        return found


_LIVE_ITEMS = text(
    f"""
    WITH lines AS (
        SELECT product ->> 'product_id' AS item
        FROM {PURCHASE_LINES}
        WHERE e.event = ANY(:events) AND e.user_id IS NOT NULL
            AND e.timestamp > :since AND e.timestamp <= :until
    )
    SELECT lines.item, count(*) AS n, bool_or(c.id IS NOT NULL) AS listed
    FROM lines LEFT JOIN catalog_items AS c ON c.id = lines.item AND c.available
    WHERE lines.item IS NOT NULL
    GROUP BY lines.item
    """
)
_LIVE_HISTORIES = text(
    f"""
    WITH lines AS (
        SELECT e.user_id, product ->> 'product_id' AS item, e.timestamp
        FROM {PURCHASE_LINES}
        WHERE e.event = ANY(:events) AND e.user_id IS NOT NULL AND e.timestamp <= :until
    ),
    listed AS (
        SELECT lines.* FROM lines JOIN catalog_items AS c ON c.id = lines.item AND c.available
    )
    SELECT count(DISTINCT item) AS n FROM listed
    WHERE user_id IN (SELECT user_id FROM listed WHERE timestamp > :since)
    GROUP BY user_id
    """
)


async def measure(
    conn: AsyncConnection, *, config: DriftConfig, events: Sequence[str], now: datetime
) -> Drift:
    """The active version's input drift over the `config.window` before `now`."""
    row = (
        await conn.execute(
            select(ranking_models.c.version, ranking_models.c.profile).where(
                ranking_models.c.status == "active"
            )
        )
    ).one_or_none()
    if row is None:
        return Drift("no active version", "no active version: nothing to measure drift against")
    version, profile = int(row.version), row.profile
    if profile is None:
        return Drift(
            "no training profile",
            f"version {version} has no training profile (it was trained before drift was "
            "measured): a version trained now has one",
            version=version,
        )
    since = now - config.window
    params = {"events": list(events), "since": since, "until": now}
    known: dict[str, int] = profile["items"]
    item_counts = [0] * len(profile["item_counts"])
    outside = 0
    for item, n, listed in (await conn.execute(_LIVE_ITEMS, params)).all():
        if not listed:
            outside += n
        else:
            item_counts[known.get(item, len(item_counts) - 1)] += n
    purchases, unseen = sum(item_counts), item_counts[-1]
    edges = profile["history_edges"]
    lengths = (await conn.scalars(_LIVE_HISTORIES, params)).all()
    users = history_counts(lengths, edges)
    counts = {
        "live_purchases": purchases,
        "live_users": sum(users),
        "unseen_purchases": unseen,
        "outside_catalogue": outside,
        "training_purchases": profile["purchases"],
        "training_users": profile["users"],
    }
    bins = {
        "items": {"training": profile["item_counts"], "live": item_counts},
        "history": {"training": profile["history_counts"], "live": users},
    }
    if purchases < config.min_purchases:
        return Drift(
            "not enough traffic",
            f"not enough traffic: {purchases} purchases of catalogue items in the window "
            f"(at least {config.min_purchases} are needed to tell drift from chance)",
            version, since, now, [], counts, bins,
        )  # fmt: skip
    figures = [
        _figure("item_psi", psi(profile["item_counts"], item_counts), config.item_psi),
        _history(profile["history_counts"], users, config),
        _figure("unseen_share", unseen / purchases, config.unseen_share),
    ]
    passed = [f for f in figures if f.passed]
    summary = (
        f"version {version}'s input drifted: " + ", ".join(describe(f) for f in passed)
        if passed
        else f"version {version}: no drift (" + ", ".join(describe(f) for f in figures) + ")"
    )
    status: Status = "drifted" if passed else "steady"
    return Drift(status, summary, version, since, now, figures, counts, bins)


def _figure(name: str, value: float, threshold: float) -> Figure:
    return Figure(name, value, threshold, value > threshold)


def _history(training: list[int], live: list[int], config: DriftConfig) -> Figure:
    if sum(live) < config.min_users or not sum(training):
        return Figure(
            "history_psi", None, config.history_psi, False,
            f"{sum(live)} active users (training {sum(training)}); at least "
            f"{config.min_users} are needed on each side",
        )  # fmt: skip
    return _figure("history_psi", psi(training, live), config.history_psi)


LABELS = {
    "item_psi": "item popularity PSI",
    "history_psi": "history length PSI",
    "unseen_share": "unseen items",
}


def describe(figure: Figure) -> str:
    """`item popularity PSI 0.31 > 0.2`, `unseen items 4% <= 15%`."""
    label = LABELS[figure.name]
    if figure.value is None:
        return f"{label} not measured ({figure.note})"
    percent = figure.name == "unseen_share"
    value = f"{figure.value:.0%}" if percent else f"{figure.value:.3f}"
    threshold = f"{figure.threshold:.0%}" if percent else f"{figure.threshold:g}"
    return f"{label} {value} {'>' if figure.passed else '<='} {threshold}"
