"""The arbitration store: decisions serialised per user on Postgres, recorded with reasons.

The only I/O of `rules/`. Each decision runs in the caller's transaction under a
per-user advisory lock, so two journeys racing for the last slot of a cap are decided
one after the other. A retried request (same idempotency key) gets the same answer
while that answer holds: a send or a suppression for ever, a deferral until its time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rules.decision import (
    Check,
    Contact,
    Decision,
    Peer,
    SendRequest,
    Suppressed,
    UserState,
    decide,
)
from rules.policy import Policy

metadata = MetaData()

# One row per message that asked to be sent: its latest state and its conflict window.
# Rows in state `sent` are the contact history that caps and de-duplication count.
arbitration_requests = Table(
    "arbitration_requests",
    metadata,
    Column("key", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True)),
    # pending (deferred) | sent | suppressed | released (sent, then delivery failed)
    Column("state", Text, nullable=False),
    Column("channel", Text),
    Column("until", DateTime(timezone=True)),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Index("arbitration_requests_user_idx", "user_id", "decided_at"),
    Index("arbitration_requests_decided_idx", "decided_at", "key"),  # retention
)

# Every decision ever made, with the checks behind it: "why did X not get Y?"
arbitration_decisions = Table(
    "arbitration_decisions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key", Text, ForeignKey("arbitration_requests.key"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("journey", Text),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("action", Text, nullable=False),
    Column("channel", Text),
    Column("until", DateTime(timezone=True)),
    Column("score", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("checks", JSONB, nullable=False),
    Index("arbitration_decisions_user_idx", "user_id", "decided_at"),
    Index("arbitration_decisions_key_idx", "key", "id"),
)

# Standing stops: unsubscribes, bounces, complaints, CRM do-not-contact.
suppressions = Table(
    "suppressions",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("channel", Text, nullable=False),  # or "*"
    Column("category", Text, nullable=False),  # or "*"
    Column("reason", Text, nullable=False),
    Column("source", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("user_id", "channel", "category", "reason"),
)


class IdempotencyConflict(Exception):
    """The idempotency key was used before for a different message."""


_LOAD = """
    SELECT
      (SELECT row_to_json(r) FROM arbitration_requests r WHERE r.key = $1) AS prior,
      (SELECT row_to_json(d) FROM arbitration_decisions d WHERE d.key = $1
         ORDER BY d.id DESC LIMIT 1) AS last,
      (SELECT coalesce(json_agg(json_build_object(
                'key', r.key, 'channel', r.channel, 'sent_at', r.decided_at,
                'request', r.request)), '[]')
         FROM arbitration_requests r
         WHERE r.user_id = $2 AND r.state = 'sent' AND r.decided_at > $3
      ) AS contacts,
      (SELECT coalesce(json_agg(json_build_object(
                'reason', s.reason, 'channel', s.channel, 'category', s.category)), '[]')
         FROM suppressions s WHERE s.user_id = $2) AS suppressions,
      (SELECT coalesce(json_agg(json_build_object(
                'request', r.request, 'window_end', r.window_end)), '[]')
         FROM arbitration_requests r
         WHERE r.user_id = $2 AND r.key <> $1 AND r.state NOT IN ('released', 'suppressed')
           AND r.window_end >= LEAST($4,
                 (SELECT own.window_end FROM arbitration_requests own WHERE own.key = $1))
      ) AS peers
    """


async def lock_user(
    conn: AsyncConnection, user_id: str, *, also: ColumnElement[Any] | None = None
) -> Any:
    """Serialise decisions for one user until the transaction ends.

    `also` is evaluated in the same round trip and returned. Its snapshot predates the
    lock, so use it only for data the lock does not protect (the profile, say).
    """
    lock = func.pg_advisory_xact_lock(func.hashtextextended(f"arbitration\x1f{user_id}", 0))
    row = (await conn.execute(select(lock, also) if also is not None else select(lock))).one()
    return row[1] if also is not None else None


_STATE = "SELECT * FROM arbitration_state($1, $2, $3, $4)"


async def arbitrate(
    conn: AsyncConnection,
    request: SendRequest,
    *,
    traits: Mapping[str, Any],
    policy: Policy,
    now: datetime,
    default_timezone: str = "UTC",
    in_global_control: bool = False,
) -> Decision:
    """Decide and record, inside the caller's transaction, after `lock_user`."""
    # Straight to the driver: this runs for every message, and SQLAlchemy's statement
    # handling cost more than Postgres's work here.
    driver = await driver_connection(conn)
    row = await driver.fetchrow(_LOAD, request.key, request.user_id, *_since(policy, now))
    return await _decide_and_record(
        driver, request, row, traits=traits, policy=policy, now=now,
        default_timezone=default_timezone, in_global_control=in_global_control,
    )  # fmt: skip


async def lock_and_arbitrate(
    driver: Any,
    request: SendRequest,
    *,
    policy: Policy,
    now: datetime,
    default_timezone: str = "UTC",
    held_out: Callable[[str], bool] | None = None,
) -> Decision:
    """Lock the user, decide and record in two round trips, inside a transaction the
    caller began on `driver` (an asyncpg connection). The request's user may have been
    merged into another (a journey step that began before an identify): the decision is
    for that one, under both locks, and caps count both ids' contacts. `held_out` says
    whether a user is in the global control group."""
    row = await driver.fetchrow(_STATE, request.key, request.user_id, *_since(policy, now))
    user_id = row["user_id"]
    if user_id != request.user_id:
        request = replace(request, user_id=user_id)
    return await _decide_and_record(
        driver, request, row, traits=_json(row["traits"]) or {}, policy=policy, now=now,
        default_timezone=default_timezone,
        in_global_control=held_out is not None and held_out(user_id),
    )  # fmt: skip


def _since(policy: Policy, now: datetime) -> tuple[datetime, datetime]:
    """Since when contacts count, and since when other requests' windows matter."""
    longest_window = max(policy.conflicts.windows.values(), default=timedelta(0))
    return now - policy.longest_window, now - longest_window - policy.max_defer


async def _decide_and_record(
    driver: Any,
    request: SendRequest,
    row: Mapping[str, Any],
    *,
    traits: Mapping[str, Any],
    policy: Policy,
    now: datetime,
    default_timezone: str,
    in_global_control: bool,
) -> Decision:
    fingerprint = _fingerprint(request)
    prior, last = _json(row["prior"]), _json(row["last"])
    contacts, stops, peers = _json(row["contacts"]), _json(row["suppressions"]), _json(row["peers"])
    window_end = None
    if prior is not None:
        if not _same_message(prior["fingerprint"], request, fingerprint):
            raise IdempotencyConflict(
                f"idempotency key {request.key!r} was used for a different message"
            )
        if last is not None and _still_holds(prior, last, now):
            return _decision_from_row(last)
        # Asked again after a deferral ran out: decide anew as the original request
        # (for the user asked for now: theirs may have been merged into another since).
        request = replace(_request_from_json(prior["request"]), user_id=request.user_id)
        window_end = _time(prior["window_end"]) if prior["window_end"] else None
    state = UserState(
        traits=traits,
        contacts=[_contact(c) for c in contacts],
        suppressions=[Suppressed(s["reason"], s["channel"], s["category"]) for s in stops],
        peers=[Peer(_request_from_json(p["request"]), _time(p["window_end"])) for p in peers],
        window_end=window_end,
        default_timezone=default_timezone,
        in_global_control=in_global_control,
    )
    decision = decide(request, state, policy, now)
    await _record(driver, request, fingerprint, decision, now)
    return decision


async def release(conn: AsyncConnection, key: str) -> None:
    """A send that was never delivered stops counting towards caps."""
    await conn.execute(
        text(
            "UPDATE arbitration_requests SET state = 'released' WHERE key = :k AND state = 'sent'"
        ),
        {"k": key},
    )


async def withdraw(conn: AsyncConnection, key: str) -> None:
    """A deferred request its journey no longer makes (the user moved to a newer version)
    stops holding a place in its conflict window."""
    await conn.execute(
        text(
            "UPDATE arbitration_requests SET state = 'released' "
            "WHERE key = :k AND state = 'pending'"
        ),
        {"k": key},
    )


async def suppress(
    conn: AsyncConnection,
    user_id: str,
    *,
    reason: str,
    channel: str = "*",
    category: str = "*",
    source: str | None = None,
    now: datetime,
) -> None:
    """Record a standing stop (idempotent)."""
    await conn.execute(
        insert(suppressions)
        .values(
            user_id=user_id,
            channel=channel,
            category=category,
            reason=reason,
            source=source,
            created_at=now,
        )
        .on_conflict_do_nothing()
    )


async def decisions_for(
    conn: AsyncConnection, user_id: str, *, journey: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """A user's decisions, newest first, with the checks that made them."""
    query = (
        arbitration_decisions.select()
        .where(arbitration_decisions.c.user_id == user_id)
        .order_by(arbitration_decisions.c.decided_at.desc(), arbitration_decisions.c.id.desc())
        .limit(limit)
    )
    if journey is not None:
        query = query.where(arbitration_decisions.c.journey == journey)
    return [dict(r._mapping) for r in await conn.execute(query)]


# ---- rows <-> values -----------------------------------------------------------------


def _still_holds(prior: Mapping[str, Any], last: Mapping[str, Any], now: datetime) -> bool:
    if prior["state"] in ("sent", "suppressed", "released"):
        return True
    until = _time(last["until"]) if last.get("until") else None
    return until is not None and now < until


def _fingerprint(request: SendRequest, *, without: tuple[str, ...] = ("user_id",)) -> str:
    """What makes a request the same message. Not the user: the key names them already,
    and a user merged into another (identify, alias) asks again under the new id."""
    skip = ("requested_at", *without)
    content = {k: v for k, v in _request_json(request).items() if k not in skip}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def _same_message(stored: str, request: SendRequest, fingerprint: str) -> bool:
    # Requests recorded before the user was left out carry it in their fingerprint.
    return stored == fingerprint or stored == _fingerprint(request, without=())


def _request_json(request: SendRequest) -> dict[str, Any]:
    return {
        "key": request.key,
        "user_id": request.user_id,
        "channels": list(request.channels),
        "category": request.category,
        "priority": request.priority,
        "requested_at": request.requested_at.isoformat(),
        "value": request.value,
        "propensity": request.propensity,
        "tags": list(request.tags),
        "journey": request.journey,
        "template": request.template,
        "content_key": request.content_key,
    }


def _request_from_json(data: Mapping[str, Any]) -> SendRequest:
    return SendRequest(
        key=data["key"],
        user_id=data["user_id"],
        channels=tuple(data["channels"]),
        category=data["category"],
        priority=data["priority"],
        requested_at=_time(data["requested_at"]),
        value=data.get("value"),
        propensity=data.get("propensity"),
        tags=tuple(data.get("tags") or ()),
        journey=data.get("journey"),
        template=data.get("template"),
        content_key=data.get("content_key"),
    )


def _contact(row: Mapping[str, Any]) -> Contact:
    request = row["request"]
    return Contact(
        key=row["key"],
        channel=row["channel"],
        category=request["category"],
        sent_at=_time(row["sent_at"]),
        journey=request.get("journey"),
        tags=tuple(request.get("tags") or ()),
        content_key=request.get("content_key") or request.get("template"),
    )


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _decision_from_row(row: Mapping[str, Any]) -> Decision:
    return Decision(
        action=row["action"],
        channel=row["channel"],
        until=_time(row["until"]) if row.get("until") else None,
        score=row["score"],
        checks=tuple(Check(c["rule"], c["passed"], c["detail"]) for c in row["checks"]),
    )


async def _record(
    driver: Any, request: SendRequest, fingerprint: str, decision: Decision, now: datetime
) -> None:
    state = {"send": "sent", "suppress": "suppressed", "defer": "pending"}[decision.action]
    checks = [{"rule": c.rule, "passed": c.passed, "detail": c.detail} for c in decision.checks]
    await driver.execute(
        """
            WITH saved AS (
              INSERT INTO arbitration_requests (key, user_id, request, fingerprint,
                  requested_at, window_end, state, channel, until, decided_at)
              VALUES ($1, $2, CAST($3 AS jsonb), $4, $5,
                  $6, $7, $8, $9, $10)
              ON CONFLICT (key) DO UPDATE SET window_end = EXCLUDED.window_end,
                  state = EXCLUDED.state, channel = EXCLUDED.channel,
                  until = EXCLUDED.until, decided_at = EXCLUDED.decided_at
              RETURNING key)
            INSERT INTO arbitration_decisions (key, user_id, journey, decided_at, action,
                channel, until, score, reason, checks)
            SELECT key, $2, $11, $10, $12, $8, $9, $13, $14,
                CAST($15 AS jsonb)
            FROM saved
            """,
        request.key,
        request.user_id,
        orjson.dumps(_request_json(request)).decode(),
        fingerprint,
        request.requested_at,
        decision.window_end,
        state,
        decision.channel,
        decision.until,
        now,
        request.journey,
        decision.action,
        decision.score,
        decision.reason,
        orjson.dumps(checks).decode(),
    )


async def driver_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, inside the transaction SQLAlchemy began."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def contacts_between(
    conn: AsyncConnection, users: list[str], until: datetime, *, exclude_journeys: set[str]
) -> dict[str, list[Contact]]:
    """The messages sent to these users before `until`, by journeys other than the given
    ones: the history a preview's arbitration starts from (its caps count them)."""
    rows = await conn.execute(
        select(
            arbitration_requests.c.key,
            arbitration_requests.c.user_id,
            arbitration_requests.c.channel,
            arbitration_requests.c.decided_at.label("sent_at"),
            arbitration_requests.c.request,
        ).where(
            arbitration_requests.c.user_id.in_(users),
            arbitration_requests.c.state == "sent",
            arbitration_requests.c.decided_at < until,
        )
    )
    found: dict[str, list[Contact]] = {}
    for row in rows.mappings():
        if row["request"].get("journey") in exclude_journeys:
            continue
        found.setdefault(row["user_id"], []).append(_contact(dict(row)))
    return found


async def suppressions_of(conn: AsyncConnection, users: list[str]) -> dict[str, list[Suppressed]]:
    """The users' standing suppressions."""
    rows = await conn.execute(select(suppressions).where(suppressions.c.user_id.in_(users)))
    found: dict[str, list[Suppressed]] = {}
    for row in rows:
        found.setdefault(row.user_id, []).append(Suppressed(row.reason, row.channel, row.category))
    return found
