"""How ranked content does online: per version, slot and channel, and a canary against
the active version.

A message counts when it went out with ranked content (status sent or delivered). It
was **clicked** when a `clicked` receipt names one of its recommended items
(`data.item_id`), and **converted** when the user bought one of its recommended items
(a purchase event, `ranking.popularity_events`) within `monitoring.attribution` after
it. Rates are per message, with Wilson intervals; the baseline's fallbacks are counted
by why (`Filled.fallback`).

A canary is compared within the users it could serve (everyone, or its segment's
members by their traits now), split by the same hash that serves it, over the messages
since it started: per user, whether they clicked (converted) at least once, the
canary's arm minus the active's, with the measurement issue's always-valid confidence
sequence (`statistics.sequential_test`), so looking at it every few minutes does not
inflate false alarms. Users are counted in their arm whatever filled their messages
(the baseline included): a canary that falls back more pays for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.catalog import PURCHASE_LINES
from orchestrator.ranking.config import RankingConfig, RankingMonitoringConfig
from orchestrator.ranking.fairness import MAX_GROUPS, by_group
from orchestrator.ranking.rollout import Canary, running_canary
from orchestrator.reports.estimates import CONFIDENCE, ArmTotals, Estimate
from orchestrator.reports.statistics import SequentialTest, sequential_test, wilson_interval
from orchestrator.tables import ranking_models

# The most `ranking monitor` looks back: each message is read with its receipts and the
# user's purchases after it.
LONGEST = timedelta(days=90)

_SHOWN = text(
    f"""
    SELECT m.user_id, m.channel, m.created_at,
        m.content_source ->> 'source' AS source,
        coalesce(m.content_source ->> 'model', 'unknown') AS model,
        coalesce(m.content_source ->> 'slot', '') AS slot,
        m.content_source ->> 'fallback' AS fallback,
        EXISTS (
            SELECT 1 FROM receipts AS r
            WHERE r.message_id = m.id AND r.kind = 'clicked'
              AND m.content_source -> 'items' ? (r.payload -> 'data' ->> 'item_id')
        ) AS clicked,
        EXISTS (
            SELECT 1 FROM {PURCHASE_LINES}
            WHERE e.user_id = m.user_id AND e.event = ANY(:events) AND e.type = 'track'
              AND e.timestamp >= m.created_at AND e.timestamp < m.created_at + :attribution
              AND m.content_source -> 'items' ? (product ->> 'product_id')
        ) AS converted
    FROM messages AS m
    WHERE m.content_source IS NOT NULL AND m.status IN ('sent', 'delivered')
      AND m.created_at >= :since AND m.created_at < :until
    """
)
_TRAITS = text(
    """
    SELECT u.id, coalesce(p.traits, '{}'::jsonb) || coalesce(c."values", '{}'::jsonb) AS traits
    FROM unnest(CAST(:users AS text[])) AS u(id)
    LEFT JOIN profiles AS p ON p.user_id = u.id
    LEFT JOIN computed_profiles AS c ON c.user_id = u.id
    """
)


@dataclass(frozen=True, slots=True)
class Shown:
    """One message that showed ranked content, and what came of it."""

    user_id: str
    channel: str
    slot: str
    source: str  # model | baseline
    model: str  # hybrid-vN, popularity, or an external model's name
    fallback: str | None
    clicked: bool
    converted: bool


async def shown(
    conn: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    events: Sequence[str],
    attribution: timedelta,
) -> list[Shown]:
    rows = await conn.execute(
        _SHOWN,
        {"since": since, "until": until, "events": list(events), "attribution": attribution},
    )
    return [
        Shown(r.user_id, r.channel, r.slot, r.source, r.model, r.fallback, r.clicked, r.converted)
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Cell:
    """Messages, and the clicked and converted ones among them, with their rates."""

    messages: int
    clicks: int
    conversions: int
    click_rate: Estimate
    conversion_rate: Estimate


def cell(messages: Iterable[Shown]) -> Cell:
    listed = list(messages)
    clicks = sum(m.clicked for m in listed)
    conversions = sum(m.converted for m in listed)
    return Cell(len(listed), clicks, conversions, wilson_interval(clicks, len(listed)),
                wilson_interval(conversions, len(listed)))  # fmt: skip


@dataclass(frozen=True)
class Online:
    since: datetime
    until: datetime
    messages: int
    by_model: dict[str, Cell]  # who filled them: hybrid-vN, popularity (the baseline), ...
    by_slot: list[tuple[str, str, str, Cell]]  # (model, slot, channel, figures)
    fallbacks: dict[str, int]  # why the baseline filled a message: count


def online(messages: Sequence[Shown], *, since: datetime, until: datetime) -> Online:
    by_model: dict[str, list[Shown]] = defaultdict(list)
    by_slot: dict[tuple[str, str, str], list[Shown]] = defaultdict(list)
    for m in messages:
        by_model[m.model].append(m)
        by_slot[(m.model, m.slot, m.channel)].append(m)
    fallbacks = Counter(m.fallback or "unrecorded" for m in messages if m.source == "baseline")
    return Online(
        since,
        until,
        len(messages),
        {model: cell(listed) for model, listed in sorted(by_model.items())},
        [(*key, cell(listed)) for key, listed in sorted(by_slot.items())],
        dict(fallbacks.most_common()),
    )


@dataclass(frozen=True)
class Arm:
    """A canary comparison's arm: its users and messages."""

    users: int
    clicked_users: int
    converted_users: int
    messages: int
    fallbacks: int  # filled by the baseline for a reason other than the user's opt-out

    @property
    def fallback_share(self) -> float:
        return self.fallbacks / self.messages if self.messages else 0.0


@dataclass(frozen=True)
class CanaryComparison:
    canary: Canary
    arms: dict[str, Arm]  # "canary", "active"
    clicks: SequentialTest  # per-user click, canary minus active
    conversions: SequentialTest
    left_out: int = field(default=0)  # messages to users outside the segment


async def traits_of(conn: AsyncConnection, users: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(_TRAITS, {"users": list(users)})
    return {r.id: dict(r.traits) for r in rows}


async def trait_of(engine: AsyncEngine, users: Iterable[str], trait: str) -> dict[str, object]:
    """Each user's value of one trait now (None where they have none)."""
    async with engine.connect() as conn:
        found = await traits_of(conn, sorted(set(users)))
    return {user: traits.get(trait) for user, traits in found.items()}


async def compare_canary(
    conn: AsyncConnection,
    canary: Canary,
    messages: Sequence[Shown],
    *,
    planning_users: int,
) -> CanaryComparison:
    """The canary's arm against the active's, over `messages` (those since it started).
    Two outcomes are tested, each at 97.5%, so that a canary as good as the active
    version is rolled back by chance at most 5% of the time (Bonferroni)."""
    users = sorted({m.user_id for m in messages})
    traits = await traits_of(conn, users) if canary.segment is not None else {}
    return await asyncio.to_thread(_compared, canary, messages, traits, planning_users)


def _compared(
    canary: Canary,
    messages: Sequence[Shown],
    traits: Mapping[str, Mapping[str, Any]],
    planning_users: int,
) -> CanaryComparison:
    users = sorted({m.user_id for m in messages})
    arm_of = {
        user: ("canary" if canary.drawn(user) else "active")
        for user in users
        if canary.eligible(user, traits.get(user))
    }
    per_arm: dict[str, list[Shown]] = {"canary": [], "active": []}
    left_out = 0
    for m in messages:
        if m.user_id in arm_of:
            per_arm[arm_of[m.user_id]].append(m)
        else:
            left_out += 1
    arms = {name: _arm(listed) for name, listed in per_arm.items()}
    tests = {}
    for outcome in ("clicked", "converted"):
        totals = {
            name: ArmTotals(name, arm.users, getattr(arm, f"{outcome}_users"))
            for name, arm in arms.items()
        }
        tests[outcome] = sequential_test(
            totals["canary"], totals["active"], metric="conversion",
            planning_users=planning_users, confidence=1 - (1 - CONFIDENCE) / 2,
        )  # fmt: skip
    return CanaryComparison(canary, arms, tests["clicked"], tests["converted"], left_out)


def _arm(messages: Sequence[Shown]) -> Arm:
    users = {m.user_id for m in messages}
    return Arm(
        users=len(users),
        clicked_users=len({m.user_id for m in messages if m.clicked}),
        converted_users=len({m.user_id for m in messages if m.converted}),
        messages=len(messages),
        fallbacks=sum(1 for m in messages if m.source == "baseline" and m.fallback != "opted_out"),
    )


async def per_group(
    conn: AsyncConnection, messages: Sequence[Shown], *, by: str, bands: Sequence[float] | None
) -> dict[str, Any] | None:
    """Whether each user clicked (bought) recommended items, by the trait `by` now,
    with intervals and the groups served clearly worse flagged (`fairness.by_group`)."""
    values: dict[str, dict[str, float]] = {}
    for m in messages:
        mine = values.setdefault(m.user_id, {"clicked": 0.0, "bought": 0.0})
        mine["clicked"] = max(mine["clicked"], float(m.clicked))
        mine["bought"] = max(mine["bought"], float(m.converted))
    if not values:
        return None
    traits = await traits_of(conn, sorted(values))
    groups = {user: traits.get(user, {}).get(by) for user in values}
    grouped = await asyncio.to_thread(
        by_group, values, groups, metrics=("clicked", "bought"), bands=bands,
        max_groups=MAX_GROUPS, name_folded=False,
    )  # fmt: skip
    return {"by": by, **asdict(grouped)}


async def canary_comparison(
    conn: AsyncConnection,
    canary: Canary,
    config: RankingMonitoringConfig,
    *,
    events: Sequence[str],
    now: datetime,
) -> CanaryComparison:
    """The running canary against the active version, over the messages since it began."""
    messages = await shown(conn, since=canary.since, until=now, events=events,
                           attribution=config.attribution)  # fmt: skip
    return await compare_canary(conn, canary, messages, planning_users=config.canary_planning_users)


async def report(
    conn: AsyncConnection,
    ranking: RankingConfig,
    *,
    since: timedelta,
    now: datetime,
    by: str | None = None,
) -> dict[str, Any]:
    """What `ranking monitor` and `GET /v1/ranking/monitor` show (JSON-ready): the last
    `since` online, by a trait too (`by`, else `monitoring.by`), the active version's
    offline figures beside its online ones, its degraded state, and a running canary
    against the active version. Plain dicts, lists, numbers, strings and datetimes."""
    config = ranking.monitoring
    by = by or config.by
    events = ranking.popularity_events
    messages = await shown(conn, since=now - since, until=now, events=events,
                           attribution=config.attribution)  # fmt: skip
    figures = online(messages, since=now - since, until=now)
    active = (
        await conn.execute(
            select(ranking_models.c.version, ranking_models.c.card,
                   ranking_models.c.degraded_at, ranking_models.c.degraded_reason)
            .where(ranking_models.c.status == "active")
        )
    ).one_or_none()  # fmt: skip
    found: dict[str, Any] = {
        "since": figures.since,
        "until": figures.until,
        "messages": figures.messages,
        "by_model": {model: asdict(c) for model, c in figures.by_model.items()},
        "by_slot": [
            {"model": model, "slot": slot, "channel": channel, **asdict(c)}
            for model, slot, channel, c in figures.by_slot
        ],
        "fallbacks": figures.fallbacks,
        "active": None,
        "canary": None,
        "by_group": None
        if by is None
        else await per_group(conn, messages, by=by, bands=config.bands),
    }
    if active is not None:
        offline = dict(active.card or {}).get("offline", {})
        found["active"] = {
            "version": active.version,
            "offline": offline.get("metrics", {}),
            "online": found["by_model"].get(f"hybrid-v{active.version}"),
            "degraded": None
            if active.degraded_at is None
            else {"at": active.degraded_at, "reason": active.degraded_reason},
        }
    canary = await running_canary(conn)
    if canary is not None:
        compared = await canary_comparison(conn, canary, config, events=events, now=now)
        found["canary"] = asdict(compared)
    return found
