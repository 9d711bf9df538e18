"""Keeping each user's computed traits and segments current, in the caller's transaction.

Ingestion calls `keep_current` with the events it just stored (their traits apply
incrementally) and the users whose sent traits changed; the refresher calls it for
users whose values change with time (`next_at` passed) or who were computed under
older definitions (the backfill). Either way, per user and in user order:

1. lock the user's `computed_profiles` row (creating it), so two transactions that
   touch one user apply their events one after the other;
2. bring each trait's state up to date: fold in the new events, or rebuild it from
   the stored events when its definition changed since it was computed;
3. store the values, which every reader of a profile overlays on the sent traits
   (`profiles.whole_profile`): conditions, templates, rules, the ranking model and
   the profile API read them like any trait;
4. evaluate the segments over the profile and record each entry and exit, which
   become `Segment Entered` / `Segment Exited` events the caller stores and routes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import DateTime, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.event_store import Stored, StoredEvent, store_events
from orchestrator.registry import Snapshot
from orchestrator.segments import aggregates
from orchestrator.segments.definitions import (
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    Current,
    Definitions,
    Trait,
    deployed,
)
from orchestrator.tables import (
    computed_profiles,
    events,
    segment_memberships,
)
from orchestrator.tracking import Incoming
from rules.expressions import evaluate, event_context, holds, user_context
from rules.policy import Policy

SOURCE = "product:segments"


@dataclass(frozen=True)
class Happened:
    """A stored event, as the traits read it."""

    user_id: str
    name: str
    properties: Mapping[str, Any]
    at: datetime


async def follow_events(
    conn: AsyncConnection, stored: Stored, *, snapshot: Snapshot, policy: Policy, now: datetime
) -> list[StoredEvent]:
    """The events to route after a batch: its own, and the segment entries and exits it
    caused (stored here, like any event, from the product's own source)."""
    happened, users = users_to_keep(snapshot.computed, stored.fresh)
    if snapshot.computed.definitions:
        users |= stored.merged_into  # rebuilt from every event they have now
    if not users:
        return stored.routable
    changes = await keep_current(conn, snapshot.computed, users, now, happened=happened)
    return stored.routable + await store_changes(
        conn, changes, snapshot=snapshot, policy=policy, now=now
    )


async def store_changes(
    conn: AsyncConnection,
    changes: Sequence[Incoming],
    *,
    snapshot: Snapshot,
    policy: Policy,
    now: datetime,
) -> list[StoredEvent]:
    """Store segment entry and exit events; return those journeys need routed."""
    if not changes:
        return []
    stored = await store_events(
        conn, changes, source=SOURCE, received_at=now, snapshot=snapshot, policy=policy
    )
    return stored.routable


def users_to_keep(
    current: Current, fresh: Iterable[tuple[Incoming, str | None]]
) -> tuple[dict[str, list[Happened]], set[str]]:
    """From newly stored messages: the events each user's traits read, and every user
    whose profile needs computing again (those, and those whose sent traits changed)."""
    definitions = current.definitions
    if not definitions:
        return {}, set()
    names = definitions.events()
    readers = bool(definitions.segments) or any(
        t.expression is not None for t in definitions.traits.values()
    )
    happened: dict[str, list[Happened]] = {}
    users: set[str] = set()
    for item, user in fresh:
        if user is None:
            continue
        if item.type == "track" and item.event in names:
            happened.setdefault(user, []).append(
                Happened(user, item.event, item.properties, item.timestamp)
            )
            users.add(user)
        elif item.traits and (readers or definitions.traits.keys() & item.traits.keys()):
            users.add(user)
    return happened, users


async def keep_current(
    conn: AsyncConnection,
    current: Current,
    users: Iterable[str],
    now: datetime,
    *,
    happened: Mapping[str, Sequence[Happened]] | None = None,
) -> list[Incoming]:
    """Compute the users' traits and segments again (see the module); return the
    segment entry and exit events to store.

    A few statements whatever the number of users: one locks (creating) and reads their
    rows in user order (so transactions never wait on each other in a circle), one
    reads their sent traits, one writes them all; a user whose traits were redefined
    costs one more read of their events."""
    users = sorted(set(users))
    if not users:
        return []
    rows = (await conn.execute(_LOCK, {"users": users})).all()
    sent: dict[str, dict[str, Any]] = dict((await conn.execute(_SENT, {"users": users})).all())
    writes: list[dict[str, Any]] = []
    changes: list[Incoming] = []
    newer: dict[int, Current] = {}
    stamp = now.isoformat()
    for row in rows:
        under = current
        if row.version > current.version:
            # A newer deploy's backfill got here first (this process's snapshot is a
            # moment old): compute under the definitions the row already follows.
            under = newer.get(row.version) or await deployed(conn, row.version)
            newer[row.version] = under
        found = await evaluate_user(
            conn, under.definitions, row.user_id, traits=sent.get(row.user_id) or {},
            states=row.state, happened=(happened or {}).get(row.user_id, ()), now=now,
        )  # fmt: skip
        changed_at = {
            k: (row.changed_at.get(k, stamp) if row.values.get(k, _ABSENT) == v else stamp)
            for k, v in found.values.items()
        }
        writes.append({
            "user_id": row.user_id, "version": under.version, "state": found.states,
            "values": found.values, "changed_at": changed_at,
            "segments": sorted(found.segments),
            "next_at": found.next_at.isoformat() if found.next_at else None,
        })  # fmt: skip
        was = set(row.segments)
        changes += await _record_changes(
            conn, row.user_id, sorted(found.segments - was), sorted(was - found.segments), now
        )
    await conn.execute(_WRITE, {"rows": orjson.dumps(writes).decode(), "now": now})
    return changes


# Lock and read (creating) the users' rows, in user order.
_LOCK = text(
    """
    INSERT INTO computed_profiles (user_id)
    SELECT u FROM unnest(CAST(:users AS text[])) AS u ORDER BY u
    ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
    RETURNING user_id, version, state, "values", changed_at, segments
    """
)
_SENT = text("SELECT user_id, traits FROM profiles WHERE user_id = ANY(CAST(:users AS text[]))")
_WRITE = text(
    """
    UPDATE computed_profiles AS c
    SET version = r.version, state = r.state, "values" = r."values",
        changed_at = r.changed_at, segments = r.segments, computed_at = :now,
        next_at = r.next_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        user_id text, version int, state jsonb, "values" jsonb, changed_at jsonb,
        segments jsonb, next_at timestamptz)
    WHERE c.user_id = r.user_id
    """
).bindparams(bindparam("now", type_=DateTime(timezone=True)))


@dataclass(frozen=True)
class Evaluation:
    """A user's traits and segments under some definitions, at some time."""

    states: dict[str, Any]  # each aggregate's state, with its definition's digest
    values: dict[str, Any]  # the computed traits that have a value
    traits: dict[str, Any]  # the whole profile, sent and computed traits
    segments: set[str]
    next_at: datetime | None  # the next change with no event


async def evaluate_user(
    conn: AsyncConnection,
    definitions: Definitions,
    user_id: str,
    *,
    traits: Mapping[str, Any],
    states: Mapping[str, Any],
    happened: Sequence[Happened],
    now: datetime,
) -> Evaluation:
    """From the sent `traits` and the stored aggregate `states`: fold `happened` into the
    states (rebuilding from stored events a trait whose definition changed), compute
    every value and the segments. Writes nothing."""
    at = now.timestamp()
    aggregated = {n: t for n, t in definitions.traits.items() if t.expression is None}
    stale = [n for n, t in aggregated.items()
             if (states.get(n) or {}).get("h") != t.digest]  # fmt: skip
    # New or changed definitions start from the stored events (this batch's included).
    rebuilt = await rebuild(conn, {n: aggregated[n] for n in stale}, user_id, now)
    new_states: dict[str, Any] = {}
    for name, trait in aggregated.items():
        if name in rebuilt:
            state = rebuilt[name]
        else:
            state = states[name]
            for event in happened:
                if counts(trait, event):
                    state = aggregates.apply(trait, state, event.at.timestamp(), event.name,
                                             event.properties)  # fmt: skip
        state = aggregates.prune(trait, state, at) or {}
        new_states[name] = {**state, "h": trait.digest}

    values: dict[str, Any] = {}
    for name, trait in definitions.traits.items():
        if trait.expression is not None:
            values[name] = _expression(trait.expression, user_id, {**traits, **values})
        else:
            values[name] = aggregates.value(trait, new_states[name], at)
    values = {k: v for k, v in values.items() if v is not None}
    profile = {**traits, **values}  # as readers see it (see `profiles.whole_profile`)
    upcoming = [
        aggregates.next_change(trait, new_states[name], at)
        for name, trait in definitions.traits.items()
        if name in new_states
    ]
    due = min((t for t in upcoming if t is not None), default=None)
    return Evaluation(
        states=new_states,
        values=values,
        traits=profile,
        segments=_segments(definitions, user_id, profile),
        next_at=datetime.fromtimestamp(due, UTC) if due is not None else None,
    )


_ABSENT = object()


def counts(trait: Trait, event: Happened) -> bool:
    """Whether `trait` reads this event (its name, and its `where` if it has one)."""
    if event.name not in trait.events:
        return False
    where = trait.over.where if trait.over is not None else None
    if where is None:
        return True
    context = {"event": event_context(event.name, event.properties, event.at.isoformat())}
    return holds(where, context)


async def rebuild(
    conn: AsyncConnection, traits: Mapping[str, Trait], user_id: str, now: datetime
) -> dict[str, dict[str, Any]]:
    """Traits' states from the user's stored events (new or changed definitions), in one
    read of the events they need."""
    if not traits:
        return {}
    names = sorted({name for trait in traits.values() for name in trait.events})
    query = (
        select(events.c.event, events.c.properties, events.c.timestamp)
        .where(events.c.user_id == user_id, events.c.type == "track", events.c.event.in_(names))
        .order_by(events.c.timestamp, events.c.id)
    )
    windows = [t.over.window if t.over is not None else None for t in traits.values()]
    if all(window is not None for window in windows):
        query = query.where(events.c.timestamp > now - max(w for w in windows if w))
    states: dict[str, dict[str, Any]] = {name: {} for name in traits}
    for name, properties, timestamp in await conn.execute(query):
        event = Happened(user_id, name, properties, timestamp)
        for key, trait in traits.items():
            if counts(trait, event):
                states[key] = aggregates.apply(trait, states[key], timestamp.timestamp(), name,
                                               properties)  # fmt: skip
    return states


def _expression(source: str, user_id: str, traits: Mapping[str, Any]) -> Any:
    try:
        result = evaluate(source, {"user": user_context(user_id, traits)})
    except Exception:
        return None  # like a condition: an error (a division by zero, say) is no value
    return _plain(result)


def _plain(value: Any) -> Any:
    """A value JSON can hold: a missing attribute or a non-finite number (inside a list
    or an object too) is None, and so is anything that is not data."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return None  # Missing, Undefined and other objects


def _segments(definitions: Definitions, user_id: str, traits: Mapping[str, Any]) -> set[str]:
    context = {"user": user_context(user_id, traits)}
    return {key for key, segment in definitions.segments.items() if holds(segment.when, context)}


async def _record_changes(
    conn: AsyncConnection, user_id: str, entered: list[str], exited: list[str], now: datetime
) -> list[Incoming]:
    """Membership rows for each entry and exit, and the events that announce them."""
    changes: list[Incoming] = []
    for key in exited:
        stay = await conn.scalar(
            update(segment_memberships)
            .where(
                segment_memberships.c.segment_key == key,
                segment_memberships.c.user_id == user_id,
                segment_memberships.c.exited_at.is_(None),
            )
            .values(exited_at=now)
            .returning(segment_memberships.c.id)
        )
        if stay is not None:
            changes.append(_announce(SEGMENT_EXITED, key, user_id, stay, now))
    for key in entered:
        stay = await conn.scalar(
            insert(segment_memberships)
            .values(segment_key=key, user_id=user_id, entered_at=now)
            .on_conflict_do_nothing()
            .returning(segment_memberships.c.id)
        )
        if stay is not None:
            changes.append(_announce(SEGMENT_ENTERED, key, user_id, stay, now))
    return changes


def _announce(name: str, key: str, user_id: str, stay: int, now: datetime) -> Incoming:
    side = "entered" if name == SEGMENT_ENTERED else "exited"
    return Incoming(
        message_id=f"{key}/{stay}/{side}",
        type="track",
        event=name,
        user_id=user_id,
        anonymous_id=None,
        previous_id=None,
        properties={"segment": key},
        traits={},
        context={},
        timestamp=now,
    )


async def due_users(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """Users whose values change by `now` with no event, locked for this transaction
    (another refresher skips them)."""
    rows = await conn.execute(
        select(computed_profiles.c.user_id)
        .where(computed_profiles.c.next_at <= now)
        .order_by(computed_profiles.c.next_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [user for (user,) in rows]


async def touch(conn: AsyncConnection, user_id: str, now: datetime) -> None:
    """Ask for the user to be computed again soon (a journey step changed their traits)."""
    await conn.execute(
        insert(computed_profiles)
        .values(user_id=user_id, next_at=now)
        .on_conflict_do_update(
            index_elements=[computed_profiles.c.user_id],
            set_={"next_at": func.least(computed_profiles.c.next_at, now)},
        )
    )
