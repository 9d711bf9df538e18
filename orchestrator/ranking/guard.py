"""The ranking guard: rolls a failing canary back and takes a degraded active version out
of service, on its own, and says so.

Run every `ranking.monitoring.check_every` by the API (one process at a time: a
Postgres advisory lock), and by `orchestrator ranking monitor --guard`. A canary is
rolled back when, over the messages since it started,

- the baseline filled more than `canary_max_fallback_share` of its arm's messages (an
  error, a timeout or low confidence; not an opt-out), with at least `min_messages`, or
- with at least `canary_min_users` users in each arm, its users clicked or bought the
  recommended items less often than the active arm's, by the always-valid confidence
  sequence (`monitoring.compare_canary`): the interval of the difference lies below 0.

The active version is marked degraded (the baseline answers; `ranking activate` or a
winning retrain brings a model back) when `min_click_rate` is set and, over the last
`window`, the messages it filled (at least `min_messages`) had a click rate whose 95%
interval lies entirely under that floor. Each act is in the audit log (by `system:
ranking guard`) and raises an alert (`ranking_canary`, `ranking_degraded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.ranking.config import RankingMonitoringConfig
from orchestrator.ranking.monitoring import CanaryComparison, canary_comparison, cell, shown
from orchestrator.ranking.rollout import (
    GUARD,
    activated_at,
    active_version,
    degrade,
    end_canary,
    running_canary,
    serialised,
)
from orchestrator.tables import ranking_models


def canary_verdict(found: CanaryComparison, config: RankingMonitoringConfig) -> str | None:
    """Why the canary must go, or None while it may stay."""
    arm = found.arms["canary"]
    if (
        arm.messages >= config.min_messages
        and arm.fallback_share > config.canary_max_fallback_share
    ):
        return (
            f"the baseline filled {arm.fallbacks} of its {arm.messages} messages "
            f"({arm.fallback_share:.0%}, limit {config.canary_max_fallback_share:.0%})"
        )
    if min(a.users for a in found.arms.values()) < config.canary_min_users:
        return None
    for what, test in (("clicked", found.clicks), ("bought", found.conversions)):
        high = test.difference.high
        if test.significant and high is not None and high < 0:
            low, value = test.difference.low, test.difference.value
            return (
                f"its users {what} recommended items less often than the active version's: "
                f"{value:+.2%} (always-valid 95% interval {low:+.2%} to {high:+.2%}; "
                f"{found.arms['canary'].users} against {found.arms['active'].users} users)"
            )
    return None


async def check(
    engine: AsyncEngine, config: RankingMonitoringConfig, *, events: Sequence[str], now: datetime
) -> list[str]:
    """Judge the canary and the active version; return what was done (nothing if
    another process holds the guard)."""
    done: list[str] = []
    async with engine.begin() as conn:
        if not await conn.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtext('ranking-guard'))")
        ):
            return []
        await serialised(conn)  # no switch can happen between what is read and what is done
        canary = await running_canary(conn)
        if canary is not None:
            found = await canary_comparison(conn, canary, config, events=events, now=now)
            why = canary_verdict(found, config)
            if why is not None and await end_canary(conn, canary, actor=GUARD, now=now,
                                                    reason=why):  # fmt: skip
                done.append(f"the canary version {canary.version} is rolled back: {why}")
        done += await _floor(conn, config, events=events, now=now)
    return done


async def _floor(
    conn: AsyncConnection, config: RankingMonitoringConfig, *, events: Sequence[str], now: datetime
) -> list[str]:
    version = await active_version(conn)
    if version is None or config.min_click_rate is None:
        return []
    degraded = await conn.scalar(
        ranking_models.select()
        .with_only_columns(ranking_models.c.degraded_at)
        .where(ranking_models.c.version == version)
    )
    if degraded is not None:
        return []
    # Only what the version did since it last went live: a person who puts it back
    # after a degradation gives it a fresh start.
    since = max(now - config.window, await activated_at(conn, version) or now - config.window)
    messages = await shown(conn, since=since, until=now, events=events,
                           attribution=config.attribution)  # fmt: skip
    figures = cell(m for m in messages if m.model == f"hybrid-v{version}")
    high = figures.click_rate.high
    if figures.messages < config.min_messages or high is None or high >= config.min_click_rate:
        return []
    why = (
        f"{figures.clicks} clicks in {figures.messages} messages over the last "
        f"{config.window}: {figures.click_rate.value:.2%} (95% interval up to {high:.2%}), "
        f"under the floor of {config.min_click_rate:.2%}"
    )
    if not await degrade(conn, version, reason=why, now=now):
        return []
    return [f"version {version} is degraded, the baseline answers: {why}"]
