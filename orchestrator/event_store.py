"""Storing tracked events: deduplicated by message id, with profile traits and identities
(who each event counts for, and merges: `orchestrator.users.identity`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.profiles import add_device_tokens, merge_traits
from orchestrator.registry import Snapshot
from orchestrator.tracking import ANONYMOUS, Incoming
from orchestrator.users.erased import keyed_hash, only_user
from orchestrator.users.identity import (
    anonymous_profile,
    link,
    lock_profiles,
    previous_profile,
    resolve,
)
from rules.policy import Policy
from rules.store import suppress
from workflows.spec import Category, ChannelName

# One statement for the whole batch, whatever its size: the rows travel as one JSON
# document that Postgres unpacks, so the statement is prepared once and no per-row
# parameter conversion happens in Python (a multi-row VALUES is compiled per batch).
# Each row names its own profile; it is stored under the user that was merged into, if
# one was (`identities`), and RETURNING says whom. A row whose `erased` hash is on
# erasure's suppression list is not stored: it comes back with no id.
_INSERT = text(
    """
    WITH r AS MATERIALIZED (
      SELECT r.*, (r.erased IS NOT NULL AND EXISTS (
                     SELECT 1 FROM erased_ids AS e WHERE e.hash = r.erased)) AS listed
      FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        message_id text, type text, event text, user_id text, anonymous_id text,
        properties jsonb, traits jsonb, context jsonb, timestamp timestamptz, routable boolean,
        erased text)),
    inserted AS (
      INSERT INTO events (message_id, source, type, event, user_id, anonymous_id,
                          properties, traits, context, timestamp, received_at, routed_at)
      SELECT r.message_id, :source, r.type, r.event,
             coalesce((SELECT i.user_id FROM identities AS i WHERE i.anonymous_id = r.user_id),
                      r.user_id),
             r.anonymous_id,
             r.properties, r.traits, r.context, r.timestamp, :received_at,
             CASE WHEN r.routable THEN NULL ELSE CAST(:received_at AS timestamptz) END
      FROM r WHERE NOT r.listed
      ON CONFLICT (message_id) DO NOTHING
      RETURNING id, message_id, user_id)
    SELECT id, message_id, user_id FROM inserted
    UNION ALL
    SELECT NULL, message_id, NULL FROM r WHERE r.listed
    """
).bindparams(bindparam("received_at", type_=DateTime(timezone=True)))


log = logging.getLogger(__name__)

CHANNELS = frozenset(channel.value for channel in ChannelName)
CATEGORIES = frozenset(category.value for category in Category)


@dataclass(frozen=True)
class Stored:
    """What a batch added: the events to route, every new message with its user, and the
    merges it made (their running journeys are told once it commits)."""

    routable: list[StoredEvent]
    fresh: list[tuple[Incoming, str | None]]
    merges: list[int] = field(default_factory=list)
    merged_into: set[str] = field(default_factory=set)  # computed traits to rebuild


@dataclass(frozen=True)
class StoredEvent:
    """A newly stored event that journeys may need to hear about."""

    id: int
    message_id: str
    name: str
    user_id: str
    properties: dict[str, Any]
    timestamp: datetime
    received_at: datetime | None = None  # for the routing lag metric


async def store_events(
    conn: AsyncConnection,
    batch: Sequence[Incoming],
    *,
    source: str,
    received_at: datetime,
    snapshot: Snapshot,
    policy: Policy,
    trusted: bool = True,
    erased_key: bytes | None = None,
) -> Stored:
    """Insert new events (a retried message id changes nothing) and apply their traits,
    the identities they join and the suppressions they announce (unsubscribes, hard
    bounces, complaints). Only a `trusted` (server-side) source's alias merges two known
    users; a public source's `previousId` is always an anonymous id.

    Returns the new messages, and those that need routing in request order; the
    others are stored as already routed so the sweeper never looks at them.

    `erased_key`: messages that name only a user (`ErasedIds.drop_erased` left them for
    this, `insert_checks_users`) are checked against erasure's suppression list by the
    insert itself, under this installation's key.
    """
    # Message ids are the source's own: the same id from another source is another
    # message (a public key must not void a server's event by sending its id first).
    # The product's own sources (`receipts:email`, `links:unsubscribe`, `product:alerts`)
    # have a colon, which a workspace's source names cannot.
    # The same id twice in one request counts once, like a retry.
    unique: dict[str, Incoming] = {}
    for item in batch:
        unique.setdefault(item.message_id, replace(item, message_id=f"{source}/{item.message_id}"))
    batch = list(unique.values())
    if not batch:
        return Stored([], [])
    # Merges in this batch wait for (and make wait) other batches storing under the
    # anonymous profiles they merge away: see `lock_profiles`.
    joins = await _joins(conn, batch, trusted=trusted)
    await lock_profiles(conn, reading={i for i in map(_own_id, batch) if i.startswith(ANONYMOUS)},
                        merging={source for source, _ in joins})  # fmt: skip
    routes = [item.type == "track" and snapshot.routes(item.event) for item in batch]
    rows = [
        {
            "message_id": item.message_id,
            "type": item.type,
            "event": item.event,
            "user_id": _own_id(item),
            "anonymous_id": item.anonymous_id,
            "properties": item.properties,
            "traits": item.traits,
            "context": item.context,
            "timestamp": item.timestamp,
            "routable": route,
            "erased": keyed_hash(erased_key, item.user_id)  # type: ignore[arg-type]
            if erased_key is not None and only_user(item)
            else None,
        }
        for item, route in zip(batch, routes, strict=True)
    ]
    # Inserted in id order, so two requests with the same ids cannot deadlock on the
    # unique index; what they return stays in request order.
    rows.sort(key=lambda row: str(row["message_id"]))
    inserted = await conn.execute(
        _INSERT,
        {"source": source, "received_at": received_at, "rows": orjson.dumps(rows).decode()},
    )
    new: dict[str, tuple[int, str]] = {}
    erased = 0
    for event_id, message_id, user in inserted.all():
        if event_id is None:
            erased += 1
        else:
            new[message_id] = (event_id, user)
    if erased:
        log.info("dropped %d event(s) of erased users", erased)
    new_ids = {message_id: event_id for message_id, (event_id, _) in new.items()}
    fresh = [
        (item, new[item.message_id][1], route)
        for item, route in zip(batch, routes, strict=True)
        if item.message_id in new
    ]
    merges = await _link_identities(conn, joins, policy=policy, now=received_at, trusted=trusted)
    if merges:
        # This batch's own earlier events moved with the merge: so do their users.
        moved = await resolve(conn, {user for _, user, _ in fresh})
        fresh = [(item, moved.get(user, user), route) for item, user, route in fresh]
    # A group call's traits describe the group (a company's email, say), not the user.
    await _merge_traits(conn, [(user, item.traits) for item, user, _ in fresh
                               if item.type != "group"])  # fmt: skip
    if trusted:  # like the `device_tokens` trait: whoever sets one gets the user's pushes
        await add_device_tokens(conn, _device_tokens(fresh))
    for item, user, _ in fresh:
        if item.type == "track" and item.event is not None:
            await _record_suppression(conn, item, user, policy, received_at)
    routable = [
        StoredEvent(
            id=new_ids[item.message_id],
            message_id=item.message_id,
            name=item.event or "",
            user_id=user,
            properties=item.properties,
            timestamp=item.timestamp,
            received_at=received_at,
        )
        for item, user, route in fresh
        if route
    ]
    return Stored(
        routable,
        [(item, user) for item, user, _ in fresh],
        merges=[merge_id for merge_id, _ in merges],
        merged_into={target for _, target in merges},
    )


async def _record_suppression(
    conn: AsyncConnection, item: Incoming, user_id: str, policy: Policy, now: datetime
) -> None:
    """Unsubscribe, hard-bounce and complaint events stop further sends (see the policy)."""
    name, props = item.event, item.properties
    reason = None
    if name in policy.consent.unsubscribe_events:
        reason = "unsubscribe"
    elif name in policy.suppression.bounce_events and props.get("type", "hard") == "hard":
        reason = "bounce"
    elif name in policy.suppression.complaint_events:
        reason = "complaint"
    if reason is None:
        return
    await suppress(
        conn,
        user_id,
        reason=reason,
        channel=_known(props.get("channel"), CHANNELS),
        category=_known(props.get("category"), CATEGORIES) if reason == "unsubscribe" else "*",
        source=item.message_id,
        now=now,
    )


def _known(value: Any, known: frozenset[str]) -> str:
    """A channel or category the stop can apply to; anything else stops them all (a
    consent-safe reading of an unsubscribe from an unknown list)."""
    return value if isinstance(value, str) and value in known else "*"


def _own_id(item: Incoming) -> str:
    """The profile a message names: its user, else its anonymous visitor's."""
    return item.user_id or anonymous_profile(item.anonymous_id or "")


def _device_tokens(fresh: Sequence[tuple[Incoming, str | None, bool]]) -> dict[str, list[str]]:
    """Push tokens apps send with their events (`context.device.token`), by user."""
    found: dict[str, list[str]] = {}
    for item, user, _ in fresh:
        device = item.context.get("device")
        token = device.get("token") if isinstance(device, dict) else None
        if user is not None and isinstance(token, str) and 0 < len(token) <= 4096:
            found.setdefault(user, []).append(token)
    return found


async def _merge_traits(
    conn: AsyncConnection, updates: Sequence[tuple[str | None, dict[str, Any]]]
) -> None:
    """Merge traits into profiles, later messages winning; one upsert per user."""
    merged: dict[str, dict[str, Any]] = {}
    for user_id, traits in updates:
        if user_id is not None and traits:
            merged.setdefault(user_id, {}).update(traits)
    for user_id in sorted(merged):  # a fixed order avoids deadlocks between requests
        await merge_traits(conn, user_id, set=merged[user_id])


async def _joins(
    conn: AsyncConnection, batch: Sequence[Incoming], *, trusted: bool
) -> list[tuple[str, str]]:
    """The profiles the batch's messages join to a user that are not joined to them yet,
    in request order: a message with a user and an anonymous id, and an alias. Most
    such messages (every track of a signed-in visitor) join what is joined already: one
    read answers for all of them."""
    pairs: list[tuple[str, str]] = []
    for item in batch:
        if item.user_id is None:
            continue
        if item.type == "alias" and item.previous_id:
            source = (
                await previous_profile(conn, item.previous_id)
                if trusted
                else anonymous_profile(item.previous_id)
            )
        elif item.anonymous_id:
            source = anonymous_profile(item.anonymous_id)
        else:
            continue
        pairs.append((source, item.user_id))
    if not pairs:
        return []
    known = await resolve(conn, {i for pair in pairs for i in pair})
    return [(source, target) for source, target in dict.fromkeys(pairs)
            if known.get(source) != known.get(target, target)]  # fmt: skip


async def _link_identities(
    conn: AsyncConnection,
    joins: Sequence[tuple[str, str]],
    *,
    policy: Policy,
    now: datetime,
    trusted: bool,
) -> list[tuple[int, str]]:
    """Join (merge) them, reading afresh now that their profiles are locked. Returns the
    merges made, with their users."""
    merges: list[tuple[int, str]] = []
    for source, target in joins:
        found = await link(
            conn, source=source, target=target, policy=policy, now=now, trusted=trusted
        )
        if found is not None:
            merges.append(found)
    return merges
