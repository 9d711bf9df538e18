"""Ingestion: events accepted, refusals by reason, routing lag and the unrouted backlog."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

EVENTS_ACCEPTED = Counter(
    "orchestrator_events_accepted",
    "Events (messages) in accepted ingestion requests and Kafka polls, by source (a "
    "workspace source's name; receipts and links as receipts:<channel>, links:...); a "
    "repeated messageId counts again but is stored once",
    ["source"],
)
REFUSALS = Counter(
    "orchestrator_ingestion_refusals",
    "Refused ingestion requests, by reason: invalid (400), unauthenticated (401), "
    "forbidden (403), too_large (413), rate_limited (429)",
    ["reason"],
)
ROUTING_LAG = Histogram(
    "orchestrator_routing_lag_seconds",
    "From an event's receipt to its journeys being told (kind: entry, a workflow started; "
    "signal, running workflows signalled); the sweeper's re-routes show here too",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
UNROUTED = Gauge(
    "orchestrator_unrouted_events",
    "Stored events not yet handed to their journeys, as the sweeper last counted them: "
    "overdue (older than ORCHESTRATOR_REROUTE_AFTER_SECONDS, the sweeper's to route) and "
    "recent (routing may still be under way)",
    ["age"],
    multiprocess_mode="livemax",  # every API process counts the same table
)
REASONS = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 413: "too_large",
           429: "rate_limited"}  # fmt: skip


def count_accepted(source: str, events: int) -> None:
    EVENTS_ACCEPTED.labels(source).inc(events)


def count_refusal(status: int) -> None:
    """An ingestion request refused with this HTTP status."""
    REFUSALS.labels(REASONS.get(status, "other")).inc()


def observe_routing(received_at: datetime | None, now: datetime, *, entry: bool) -> None:
    """The event received at `received_at` reached its journeys at `now`."""
    if received_at is not None:
        lag = max(0.0, (now - received_at).total_seconds())
        ROUTING_LAG.labels("entry" if entry else "signal").observe(lag)


_BACKLOG = text(
    "SELECT count(*) FILTER (WHERE received_at < :before) AS overdue, count(*) AS total"
    " FROM events WHERE routed_at IS NULL"
)


async def measure_backlog(engine: AsyncEngine, *, now: datetime, older_than: timedelta) -> int:
    """Count unrouted events (the partial index on unrouted events keeps this cheap);
    return the overdue ones."""
    async with engine.connect() as conn:
        row = (await conn.execute(_BACKLOG, {"before": now - older_than})).one()
    UNROUTED.labels("overdue").set(row.overdue)
    UNROUTED.labels("recent").set(row.total - row.overdue)
    return int(row.overdue)
