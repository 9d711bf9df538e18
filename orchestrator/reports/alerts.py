"""Alerts: conditions worth a person's attention, raised once, resolved when they clear.

    sample_ratio        an experiment, holdout or the global control group whose split is
                        not what was configured (p < 0.001): its results cannot be trusted
    conversion_drop     a journey's conversions per entry over the last day fell by
                        `conversion_drop` or more against the 14 days before, and chance
                        is an unlikely cause (p < 0.01: the two periods' conversions
                        compared as Poisson counts with their entries as exposure, by
                        the conditional binomial test)
    delivery_failures   a channel failed more than `delivery_failure_rate` of its messages
                        in the last hour
    ranking_fallback    the popularity baseline filled more than `fallback_share` of the
                        ranked content of the last hour
    ranking_degraded    the ranking guard took the active model version out of service
                        (its online click rate fell under the floor); clears when a
                        version is activated
    ranking_canary      the ranking guard rolled a canary back within the last day
    ranking_drift       the live traffic of the last `ranking.drift.window` has moved
                        from what the active version was trained on past a
                        `ranking.drift` threshold (item popularity PSI, history length
                        PSI, unseen share; see orchestrator.ranking.drift); checked with
                        `ranking.builtin` only, and not on too little traffic

Rates need at least `MIN_VOLUME` messages or entries (drift: `ranking.drift.min_purchases`
purchases; with fewer, or no active version with a training profile, an open drift alert
stays). Each kind is checked on its own (a savepoint each): one that fails is logged and
its open alerts stay as they are, while the others are raised and resolved as usual. A
new alert becomes an `Alert Raised` event of `alerts.user_id` (a journey can react to
it) and, with `alerts.url`, a Standard Webhooks-signed POST; when its condition clears,
an `Alert Resolved` event. The API checks every `alerts.check_every`; with several API
processes one checks at a time (a Postgres advisory lock).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from scipy import stats  # type: ignore[import-untyped]
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.delivery import SignedPoster
from orchestrator.ranking import drift
from orchestrator.reports import design, service
from orchestrator.tables import alerts, audit_log, ranking_models
from orchestrator.tracking import Incoming
from rules.durations import format_duration

if TYPE_CHECKING:
    from orchestrator.services import Services

log = logging.getLogger(__name__)

MIN_VOLUME = 20
RAISED, RESOLVED = "Alert Raised", "Alert Resolved"
# A conversion drop is only called when chance is this unlikely to explain it.
DROP_P_VALUE = 0.01

_CONVERSIONS = text(
    """
    SELECT journey_key,
        count(*) FILTER (WHERE entered_at >= :since) AS recent_entries,
        count(*) FILTER (WHERE converted_at >= :since) AS recent_conversions,
        count(*) FILTER (WHERE entered_at >= :baseline AND entered_at < :since) AS entries,
        count(*) FILTER (WHERE converted_at >= :baseline AND converted_at < :since) AS conversions
    FROM enrollments WHERE entered_at >= :baseline OR converted_at >= :baseline
    GROUP BY journey_key
    """
)
_FAILURES = text(
    """
    SELECT channel, count(*) AS finished, count(*) FILTER (WHERE status = 'failed') AS failed
    FROM messages WHERE created_at >= :since AND status <> 'sending'
    GROUP BY channel
    """
)
_FALLBACK = text(
    """
    SELECT count(*) AS filled,
        count(*) FILTER (WHERE content_source ->> 'source' = 'baseline') AS baseline
    FROM messages WHERE created_at >= :since AND content_source IS NOT NULL
    """
)


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


async def findings(
    conn: AsyncConnection, services: Services, *, now: datetime
) -> tuple[list[Finding], set[str]]:
    """Every alert condition that holds now, and the kinds that could be checked."""
    config = services.config.alerts
    # a check answers None when it cannot tell now (its open alerts stay as they are)
    checks: dict[str, Callable[[], Awaitable[list[Finding] | None]]] = {
        "sample_ratio": lambda: _sample_ratios(conn, services.config.global_control, now=now),
        "conversion_drop": lambda: _conversion_drops(conn, config.conversion_drop, now=now),
        "delivery_failures": lambda: _delivery_failures(
            conn, config.delivery_failure_rate, now=now
        ),
        "ranking_fallback": lambda: _ranking_fallback(conn, config.fallback_share, now=now),
        "ranking_degraded": lambda: _ranking_degraded(conn),
        "ranking_canary": lambda: _ranking_canary(conn, now=now),
        "ranking_drift": lambda: _ranking_drift(conn, services, now=now),
    }
    found: list[Finding] = []
    checked: set[str] = set()
    for kind, run in checks.items():
        try:
            async with conn.begin_nested():
                holding = await run()
        except Exception:
            log.exception("the %s alert check failed; its open alerts stay as they are", kind)
            continue
        if holding is not None:
            found += holding
            checked.add(kind)
    return found, checked


async def _conversion_drops(conn: AsyncConnection, drop: float, *, now: datetime) -> list[Finding]:
    found = []
    params = {"since": now - timedelta(days=1), "baseline": now - timedelta(days=15)}
    for row in await conn.execute(_CONVERSIONS, params):
        if row.entries < MIN_VOLUME or row.recent_entries < MIN_VOLUME or not row.conversions:
            continue
        before = row.conversions / row.entries
        recent = row.recent_conversions / row.recent_entries
        # Given all conversions of both periods, the recent ones are binomial with the
        # recent period's share of the entries when the rate per entry has not changed.
        exposure = row.recent_entries / (row.recent_entries + row.entries)
        test = stats.binomtest(row.recent_conversions, row.recent_conversions + row.conversions,
                               exposure, alternative="less")  # fmt: skip
        if recent <= (1 - drop) * before and test.pvalue < DROP_P_VALUE:
            found.append(Finding(
                "conversion_drop", row.journey_key,
                f"{row.journey_key}: conversions per entry fell to {100 * recent:.1f}% over the "
                f"last day from {100 * before:.1f}% (p = {test.pvalue:.2g})",
                {"recent": recent, "before": before, "p_value": float(test.pvalue)},
            ))  # fmt: skip
    return found


async def _delivery_failures(conn: AsyncConnection, rate: float, *, now: datetime) -> list[Finding]:
    found = []
    for row in await conn.execute(_FAILURES, {"since": now - timedelta(hours=1)}):
        if row.finished >= MIN_VOLUME and row.failed > rate * row.finished:
            found.append(Finding(
                "delivery_failures", row.channel,
                f"{row.channel}: {row.failed} of {row.finished} messages failed in the last hour",
                {"failed": row.failed, "finished": row.finished},
            ))  # fmt: skip
    return found


async def _ranking_fallback(conn: AsyncConnection, share: float, *, now: datetime) -> list[Finding]:
    filled = (await conn.execute(_FALLBACK, {"since": now - timedelta(hours=1)})).one()
    if filled.filled < MIN_VOLUME or filled.baseline <= share * filled.filled:
        return []
    return [Finding(
        "ranking_fallback", "ranking",
        f"ranking: the popularity baseline filled {filled.baseline} of {filled.filled} "
        "messages' ranked content in the last hour",
        {"baseline": filled.baseline, "filled": filled.filled},
    )]  # fmt: skip


async def _ranking_degraded(conn: AsyncConnection) -> list[Finding]:
    found = await conn.execute(
        select(ranking_models.c.version, ranking_models.c.degraded_reason).where(
            ranking_models.c.status == "active", ranking_models.c.degraded_at.is_not(None)
        )
    )
    return [Finding(
        "ranking_degraded", f"ranking:v{row.version}",
        f"ranking: version {row.version} is out of service, the baseline answers: "
        f"{row.degraded_reason}",
        {"version": row.version},
    ) for row in found]  # fmt: skip


async def _ranking_canary(conn: AsyncConnection, *, now: datetime) -> list[Finding]:
    found = await conn.execute(
        select(audit_log.c.subject, audit_log.c.details["reason"].as_string().label("reason"))
        .where(audit_log.c.action == "ranking.rollback", audit_log.c.actor_kind == "system",
               audit_log.c.at >= now - timedelta(days=1))
    )  # fmt: skip
    return [Finding(
        "ranking_canary", row.subject,
        f"ranking: the canary {row.subject} was rolled back: {row.reason}",
        {"reason": row.reason},
    ) for row in found]  # fmt: skip


async def _ranking_drift(
    conn: AsyncConnection, services: Services, *, now: datetime
) -> list[Finding] | None:
    """Too little traffic, or no version with a profile, tells nothing: None."""
    ranking = services.config.ranking
    if not ranking.builtin:
        return []
    found = await drift.measure(
        conn, config=ranking.drift, events=ranking.popularity_events, now=now
    )
    if found.status not in ("drifted", "steady"):
        return None
    if not found.drifted:
        return []
    figures = {f.name: f.value for f in found.figures}
    return [Finding(
        "ranking_drift", "ranking",
        f"ranking, last {format_duration(ranking.drift.window)}: {found.summary}",
        {"version": found.version, **figures, **found.counts,
         "passed": [f.name for f in found.figures if f.passed]},
    )]  # fmt: skip


async def _sample_ratios(
    conn: AsyncConnection, global_control: float, *, now: datetime
) -> list[Finding]:
    """Every running split (ended ones keep their archived results and raise nothing)."""
    found = []
    subjects: list[tuple[str, design.Kind, str]] = []
    if global_control:
        subjects.append(("*", "global_control", "global_control"))
    for row in await conn.execute(text("SELECT key FROM journeys WHERE active ORDER BY key")):
        spec = await design.journey_spec(conn, row.key)
        if spec.holdout:
            subjects.append((row.key, "holdout", "holdout"))
        subjects += [(row.key, kind, key) for kind, key in design.configured(spec)
                     if kind == "experiment"]  # fmt: skip
    for journey, kind, key in subjects:
        result = await service.experiment(conn, journey=journey, key=key, kind=kind,
                                          global_control=global_control, now=now,
                                          timeline=False)  # fmt: skip
        srm = result.analysis.sample_ratio if result.analysis else None
        if result.ended_at is None and srm is not None and srm.mismatch:
            subject = "global_control" if journey == "*" else f"{journey}/{key}"
            found.append(Finding(
                "sample_ratio", subject,
                f"{subject}: users per arm {list(srm.observed)} do not match the configured "
                f"split (p = {srm.p_value:.2g}); its results cannot be trusted",
                {"observed": list(srm.observed), "expected": list(srm.expected),
                 "p_value": srm.p_value},
            ))  # fmt: skip
    return found


async def check(services: Services, *, now: datetime) -> list[Finding]:
    """Raise what newly holds, resolve what cleared; return the newly raised. One API
    process at a time (the others return nothing)."""
    raised: list[tuple[int, Finding]] = []
    cleared: list[dict[str, Any]] = []
    async with services.engine.begin() as conn:
        if not await conn.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext('alerts'))")):
            return []
        holding, checked = await findings(conn, services, now=now)
        open_ = {(r.kind, r.subject): r for r in await conn.execute(
            select(alerts).where(alerts.c.resolved_at.is_(None)))}  # fmt: skip
        for finding in holding:
            known = open_.get((finding.kind, finding.subject))
            if known is not None:
                await conn.execute(update(alerts).where(alerts.c.id == known.id)
                                   .values(seen_at=now, details=finding.details))  # fmt: skip
                continue
            alert_id = await conn.scalar(
                insert(alerts)
                .values(kind=finding.kind, subject=finding.subject, opened_at=now, seen_at=now,
                        details={"summary": finding.summary, **finding.details})
                .returning(alerts.c.id)
            )  # fmt: skip
            raised.append((int(alert_id), finding))
        held = {(f.kind, f.subject) for f in holding}
        for key, row in open_.items():
            if key not in held and row.kind in checked:
                await conn.execute(update(alerts).where(alerts.c.id == row.id)
                                   .values(resolved_at=now))  # fmt: skip
                cleared.append({"id": row.id, "kind": row.kind, "subject": row.subject})
    events = [_event(services, f"alert:{i}:raised", RAISED, _properties(i, f), now)
              for i, f in raised]  # fmt: skip
    events += [_event(services, f"alert:{c['id']}:resolved", RESOLVED, c, now) for c in cleared]
    if events:
        await services.ingest(events, source="product:alerts", now=now)
    for alert_id, finding in raised:
        await _post(services, alert_id, finding, now)
    return [finding for _, finding in raised]


def _properties(alert_id: int, finding: Finding) -> dict[str, Any]:
    return {"id": alert_id, "kind": finding.kind, "subject": finding.subject,
            "summary": finding.summary, **finding.details}  # fmt: skip


def _event(
    services: Services, message_id: str, name: str, properties: dict[str, Any], now: datetime
) -> Incoming:
    return Incoming(
        message_id=message_id, type="track", event=name,
        user_id=services.config.alerts.user_id, anonymous_id=None, previous_id=None,
        properties=properties, traits={}, context={}, timestamp=now,
    )  # fmt: skip


async def _post(services: Services, alert_id: int, finding: Finding, now: datetime) -> None:
    config = services.config.alerts
    if config.url is None or config.signing_secret is None:
        return
    poster = SignedPoster(url=config.url, secrets=[config.signing_secret], client=services.http)
    payload = {"type": "alert.raised", "timestamp": now.isoformat(),
               "data": _properties(alert_id, finding)}  # fmt: skip
    try:
        await poster.post(payload, msg_id=f"alert_{alert_id}")
    except Exception as exc:  # the alert stands in the reports and as an event regardless
        log.warning("alert %s could not be posted to %s: %s", alert_id, config.url, exc)
