"""Who a user is: anonymous profiles, `identify` and `alias`, and merging two profiles.

The rules (README, "Who a user is"):

- An event counts for its `userId`; without one, for the user its `anonymousId` was
  identified as; otherwise for the anonymous profile `anonymous:<anonymousId>` (traits
  kept, journeys entered, like any user). A `userId` aliased to another user counts for
  that user.
- `identify` with a `userId` U and an `anonymousId` A, or `alias` from `previousId` P to
  U, merges a profile into U: `anonymous:A`, or P when P is a user we know (otherwise
  `anonymous:P`). A profile already merged into another user V is not merged again
  (a shared device): its later events count for U, and nothing moves between U and V.
- A merge moves everything the merged profile had to U: traits (per trait the newest
  change wins; consent and do-not-contact the stricter; device tokens add up), events,
  messages and the inbox, decisions and contact history (caps count both), suppressions,
  enrollments (running journeys keep running, as U), assignments (U's own win where both
  have one) and segment history; U's computed traits are computed again from all the
  events. A journey the merged profile runs that U runs too ends (`merged`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.base import ADDRESSES
from orchestrator.profiles import MAX_DEVICE_TOKENS, MAX_TRAITS
from orchestrator.tables import (
    assignments,
    computed_profiles,
    enrollments,
    events,
    identities,
    identity_merges,
    messages,
    profiles,
    segment_memberships,
    user_messages,
)
from orchestrator.tracking import ANONYMOUS
from rules import store
from rules.policy import Policy
from rules.store import arbitration_decisions, arbitration_requests, suppressions
from workflows import search
from workflows.messages import MERGED

# The tables a merge moves a user's rows in: these as they are, the others by their own
# rule (profiles, suppressions, assignments, enrollments, computed traits and segments).
_MOVED_AS_THEY_ARE = (messages, user_messages, arbitration_requests, arbitration_decisions)
_MERGED = (profiles, events, *_MOVED_AS_THEY_ARE, suppressions, assignments, enrollments,
           computed_profiles, segment_memberships)  # fmt: skip


def anonymous_profile(anonymous_id: str) -> str:
    return ANONYMOUS + anonymous_id


@dataclass(frozen=True)
class Merged:
    """A merge done, and the running workflows that moved with it."""

    source: str
    target: str
    workflows: list[dict[str, Any]] = field(default_factory=list)


async def resolve(conn: AsyncConnection, ids: Collection[str]) -> dict[str, str]:
    """The user each of `ids` was merged into (ids never merged are left out)."""
    if not ids:
        return {}
    rows = await conn.execute(
        select(identities.c.anonymous_id, identities.c.user_id).where(
            identities.c.anonymous_id.in_(sorted(ids))
        )
    )
    return dict(rows.all())


class MergedAway(Exception):
    """The id was merged into another user, who holds its data now."""


async def refuse_merged(conn: AsyncConnection, user_id: str) -> None:
    """Erasure and export name a user, not an id of theirs merged away: MergedAway."""
    into = (await resolve(conn, [user_id])).get(user_id)
    if into is not None:
        raise MergedAway(
            f"{user_id!r} was merged into user {into!r} (identify or alias), who holds its "
            f"data now: erase or export {into!r}"
        )


async def every_id(conn: AsyncConnection, user_id: str) -> list[str]:
    """A user's ids: the user (whom `user_id` names, or was merged into) first, then every
    id merged into them (their anonymous profiles, ids aliased to them)."""
    user = (await resolve(conn, [user_id])).get(user_id, user_id)
    merged = await conn.execute(
        select(identities.c.anonymous_id)
        .where(identities.c.user_id == user)
        .order_by(identities.c.anonymous_id)
    )
    return [user, *(i for i in merged.scalars() if i != user)]


async def previous_profile(conn: AsyncConnection, previous_id: str) -> str:
    """What an alias's `previousId` names: a user we know by that id, else an anonymous id."""
    known = await conn.scalar(
        select(
            exists().where(profiles.c.user_id == previous_id)
            | exists().where(events.c.user_id == previous_id)
            | exists().where(identities.c.anonymous_id == previous_id)  # merged before
        )
    )
    return previous_id if known else anonymous_profile(previous_id)


async def lock_profiles(
    conn: AsyncConnection, *, reading: Collection[str], merging: Collection[str] = ()
) -> None:
    """Until the transaction ends: profiles this transaction stores under (`reading`,
    shared) or merges away (`merging`, exclusive), in one statement, in a fixed order.
    A merge so waits for the batches storing under its profile, and a batch stored
    after it sees it: no event is left behind on a profile merged away."""
    wanted = {key: False for key in reading} | {key: True for key in merging}
    if not wanted:
        return
    keys = sorted(wanted)
    await conn.execute(
        text(
            "SELECT CASE WHEN x THEN pg_advisory_xact_lock(h) ELSE pg_advisory_xact_lock_shared(h)"
            " END FROM (SELECT hashtextextended('profile' || chr(31) || k, 0) AS h, x"
            " FROM unnest(CAST(:keys AS text[]), CAST(:exclusive AS boolean[])) AS u(k, x)"
            " ORDER BY h) AS ordered"
        ),
        {"keys": keys, "exclusive": [wanted[k] for k in keys]},
    )


async def link(
    conn: AsyncConnection,
    *,
    source: str,
    target: str,
    policy: Policy,
    now: datetime,
    trusted: bool = True,
) -> tuple[int, str] | None:
    """`source` counts for `target` from now on; merge it unless it was merged before.
    Returns the merge's id in `identity_merges` (its workflows are to be told) and the
    user merged into (`target`, or whom `target` itself was merged into). The caller
    holds `source`'s profile lock (`lock_profiles`, merging)."""
    found = await resolve(conn, [source, target])
    target = found.get(target, target)
    if source == target:
        return None
    merged_into = found.get(source)
    if merged_into == target:
        return None
    if merged_into is not None:
        # Merged into someone else already (a shared device): only later events move.
        await conn.execute(
            update(identities).where(identities.c.anonymous_id == source).values(user_id=target)
        )
        return None
    merged = await merge_users(
        conn, source=source, target=target, policy=policy, now=now, trusted=trusted
    )
    return await record_merge(conn, merged, now), target


async def merge_users(
    conn: AsyncConnection,
    *,
    source: str,
    target: str,
    policy: Policy,
    now: datetime,
    trusted: bool = True,
    relink: bool = True,
) -> Merged:
    """Move everything `source` has to `target`, in the caller's transaction (see the
    module). Running again moves what was written under `source` since (idempotent;
    `relink=False` then leaves `identities` as it is). A merge a public source asked for
    (`trusted=False`) leaves the merged profile's addresses behind: whoever sets those
    gets the user's messages."""
    await lock_profiles(conn, reading=(), merging=(source,))
    if relink:
        await _link_identity(conn, source, target)
    if not await _holds_anything(conn, source):
        return Merged(source, target)  # a device seen first as it signs in, say
    # Decisions for either user wait for the merge (and it for them), in a fixed order.
    for user in sorted((source, target)):
        await store.lock_user(conn, user)
    had_profile = await _merge_profiles(conn, source, target, policy, trusted=trusted)
    moved_events = (
        await conn.execute(update(events).where(events.c.user_id == source).values(user_id=target))
    ).rowcount
    for table in _MOVED_AS_THEY_ARE:
        await conn.execute(update(table).where(table.c.user_id == source).values(user_id=target))
    # Suppressions add up: every stop either had stays.
    moved = select(
        text(":target"), suppressions.c.channel, suppressions.c.category,
        suppressions.c.reason, suppressions.c.source, suppressions.c.created_at,
    ).where(suppressions.c.user_id == source)  # fmt: skip
    await conn.execute(
        insert(suppressions)
        .from_select(["user_id", "channel", "category", "reason", "source", "created_at"], moved)
        .on_conflict_do_nothing(),
        {"target": target},
    )
    await conn.execute(delete(suppressions).where(suppressions.c.user_id == source))
    # Assignments: the user's own choice stands where both were assigned.
    theirs = assignments.alias("theirs")
    await conn.execute(
        update(assignments)
        .where(
            assignments.c.user_id == source,
            ~exists().where(
                theirs.c.user_id == target,
                theirs.c.journey_key == assignments.c.journey_key,
                theirs.c.kind == assignments.c.kind,
                theirs.c.experiment_key == assignments.c.experiment_key,
            ),
        )
        .values(user_id=target)
    )
    await conn.execute(delete(assignments).where(assignments.c.user_id == source))
    workflows = await _move_enrollments(conn, source, target, now)
    # Nothing to count again when the merged profile had no events and no traits.
    if moved_events or had_profile:
        await _reset_computed(conn, source, target, now)
    return Merged(source, target, workflows)


async def _holds_anything(conn: AsyncConnection, user_id: str) -> bool:
    """Whether any table a merge moves holds a row of the user (one round trip)."""
    found = or_(*(exists().where(table.c.user_id == user_id) for table in _MERGED))
    return bool(await conn.scalar(select(found)))


async def record_merge(conn: AsyncConnection, merged: Merged, now: datetime) -> int:
    """Keep the merge, with the workflows to tell (none: told already)."""
    inserted = await conn.execute(
        insert(identity_merges)
        .values(source=merged.source, target=merged.target, merged_at=now,
                workflows=merged.workflows, told_at=None if merged.workflows else now)
        .returning(identity_merges.c.id)
    )  # fmt: skip
    return int(inserted.scalar_one())


async def _link_identity(conn: AsyncConnection, source: str, target: str) -> None:
    """`source` (and every id merged into it before) now counts for `target`."""
    await conn.execute(
        update(identities).where(identities.c.user_id == source).values(user_id=target)
    )
    stmt = insert(identities).values(anonymous_id=source, user_id=target)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[identities.c.anonymous_id], set_={"user_id": target}
        )
    )


async def _merge_profiles(
    conn: AsyncConnection, source: str, target: str, policy: Policy, *, trusted: bool
) -> bool:
    """Merge `source`'s traits into `target`'s profile; False if it had none."""
    rows = {
        row.user_id: row
        for row in await conn.execute(
            select(profiles)
            .where(profiles.c.user_id.in_([source, target]))
            .order_by(profiles.c.user_id)
            .with_for_update()
        )
    }
    if source not in rows:
        return False
    theirs = rows.get(target)
    own = _times(rows[source])
    if not trusted:
        own = {k: t for k, t in own.items() if k not in ADDRESSES}
    traits, times = merge_traits(
        Traits({k: rows[source].traits[k] for k in own}, own),
        Traits(dict(theirs.traits), _times(theirs)) if theirs is not None else Traits({}, {}),
        consent=policy.consent.trait,
        stop=policy.suppression.do_not_contact_trait,
    )
    stmt = insert(profiles).values(
        user_id=target, traits=traits, trait_times=times, created_at=rows[source].created_at
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[profiles.c.user_id],
            set_={"traits": traits, "trait_times": times, "updated_at": text("now()")},
        )
    )
    await conn.execute(delete(profiles).where(profiles.c.user_id == source))
    return True


def _times(row: Any) -> dict[str, str]:
    """When each trait last changed; traits older than per-trait times: the profile's."""
    fallback = row.updated_at.isoformat()
    times = dict(row.trait_times or {})
    return {key: times.get(key, fallback) for key in row.traits}


@dataclass(frozen=True)
class Traits:
    values: dict[str, Any]
    times: dict[str, str]  # ISO times, per trait


def merge_traits(
    source: Traits, target: Traits, *, consent: str, stop: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Two profiles' traits as one: per trait the newest change wins (the target on a
    tie); the consent trait and do-not-contact take the stricter of both; device tokens
    add up (the newest `MAX_DEVICE_TOKENS`)."""
    values: dict[str, Any] = {}
    times: dict[str, str] = {}
    # Past a profile's bounds, the merged profile's oldest traits of its own stay behind.
    theirs = sorted(source.values.keys() - target.values.keys(), key=lambda k: source.times[k])
    dropped = set(theirs[: max(0, len(theirs) + len(target.values) - MAX_TRAITS)])
    for key in (source.values.keys() | target.values.keys()) - dropped:
        newer = source if _newer(source, target, key) else target
        values[key], times[key] = newer.values[key], newer.times[key]
    if consent in values:
        values[consent] = stricter_consent(source.values.get(consent), target.values.get(consent))
    if stop in values:
        values[stop] = bool(source.values.get(stop)) or bool(target.values.get(stop))
    older, newer = (target, source) if _newer(source, target, "device_tokens") else (source, target)
    tokens = [*_tokens(older), *_tokens(newer)]
    if tokens:
        values["device_tokens"] = list(dict.fromkeys(tokens))[-MAX_DEVICE_TOKENS:]
    return values, times


def _newer(source: Traits, target: Traits, key: str) -> bool:
    if key not in target.values:
        return True
    if key not in source.values:
        return False
    return datetime.fromisoformat(source.times[key]) > datetime.fromisoformat(target.times[key])


def _tokens(profile: Traits) -> list[str]:
    found = profile.values.get("device_tokens")
    return [t for t in found if isinstance(t, str)] if isinstance(found, list) else []


def stricter_consent(a: Any, b: Any) -> Any:
    """Consent as both profiles gave it, the stricter where they differ: a `false`
    anywhere (a channel, or a category of one) stays false."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, bool) and isinstance(b, bool):
        return a and b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {k: stricter_consent(a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())}
    if a is False or b is False:
        return False
    # `true` for a whole channel and a per-category answer: the per-category one.
    return a if isinstance(a, Mapping) else b


async def _move_enrollments(
    conn: AsyncConnection, source: str, target: str, now: datetime
) -> list[dict[str, Any]]:
    """Move the enrollments, keeping each one's workflow; a journey (instance) both run
    ends for `source`'s. Returns the running workflows to tell, with whether each ends."""
    rows = (
        await conn.execute(
            select(
                enrollments.c.id, enrollments.c.journey_key, enrollments.c.instance,
                enrollments.c.status, enrollments.c.workflow_id,
            )
            .where(enrollments.c.user_id == source)
            .order_by(enrollments.c.id)
            .with_for_update()
        )
    ).all()  # fmt: skip
    if not rows:
        return []
    running = {
        (r.journey_key, r.instance)
        for r in await conn.execute(
            select(enrollments.c.journey_key, enrollments.c.instance).where(
                enrollments.c.user_id == target, enrollments.c.status == "active"
            )
        )
    }
    told: list[dict[str, Any]] = []
    ended = {"status": "exited", "ended_at": now, "end_reason": MERGED}
    for row in rows:
        workflow_id = row.workflow_id or search.workflow_id(row.journey_key, source, row.instance)
        values: dict[str, Any] = {"user_id": target, "workflow_id": workflow_id}
        moved = update(enrollments).where(enrollments.c.id == row.id)
        if row.status != "active":
            await conn.execute(moved.values(values))
            continue
        ends = (row.journey_key, row.instance) in running
        if not ends:
            try:
                async with conn.begin_nested():
                    await conn.execute(moved.values(values))
            except IntegrityError:
                ends = True  # the user entered it a moment ago (`enrollments_one_active`)
        if ends:
            await conn.execute(moved.values(values | ended))
        told.append({"workflow_id": workflow_id, "ends": ends})
    return told


async def _reset_computed(conn: AsyncConnection, source: str, target: str, now: datetime) -> None:
    """Segment history moves; the target's computed traits are rebuilt from all the
    events (an empty state is out of date for every trait) by the caller's `keep_current`."""
    await conn.execute(
        update(segment_memberships)
        .where(segment_memberships.c.user_id == source, segment_memberships.c.exited_at.is_(None))
        .values(exited_at=now)
    )
    await conn.execute(
        update(segment_memberships)
        .where(segment_memberships.c.user_id == source)
        .values(user_id=target)
    )
    await conn.execute(delete(computed_profiles).where(computed_profiles.c.user_id == source))
    await conn.execute(
        update(computed_profiles).where(computed_profiles.c.user_id == target).values(state={})
    )


async def untold(
    conn: AsyncConnection,
    *,
    ids: Sequence[int] | None = None,
    before: datetime | None = None,
    limit: int = 100,
) -> list[Any]:
    """Merges whose workflows were not told yet: these ids, or the oldest made `before`."""
    query = select(identity_merges).where(identity_merges.c.told_at.is_(None))
    if ids is not None:
        query = query.where(identity_merges.c.id.in_(ids))
    if before is not None:
        query = query.where(identity_merges.c.merged_at < before)
    return list((await conn.execute(query.order_by(identity_merges.c.id).limit(limit))).all())


async def mark_told(conn: AsyncConnection, merge_id: int, now: datetime) -> None:
    await conn.execute(
        update(identity_merges)
        .where(and_(identity_merges.c.id == merge_id, identity_merges.c.told_at.is_(None)))
        .values(told_at=now)
    )
