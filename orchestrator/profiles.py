"""User profiles: traits merged from identify calls, event context and journey steps, and
overlaid with the computed traits (`orchestrator.segments`) wherever they are read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ScalarSelect, Text, column, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import computed_profiles, profiles

_EMPTY = literal({}, JSONB)


def whole_profile(user_id: Any) -> ScalarSelect[Any]:
    """A user's traits as conditions, templates and rules read them: the sent traits with
    the computed ones over them (a computed trait's value wins over a sent trait of the
    same name). One JSON object; `{}` for a user we know nothing of."""
    sent = select(profiles.c.traits).where(profiles.c.user_id == user_id).scalar_subquery()
    computed = (
        select(computed_profiles.c["values"])
        .where(computed_profiles.c.user_id == user_id)
        .scalar_subquery()
    )
    return select(
        func.coalesce(sent, _EMPTY).op("||")(func.coalesce(computed, _EMPTY))
    ).scalar_subquery()


# The same, for the worker's statements that go straight to the driver ($n: the user id).
# A journey step may still name the id its user was merged from: it reads the merged user.
WHOLE_PROFILE_SQL = (
    "(SELECT coalesce(p.traits, '{{}}'::jsonb) || coalesce(c.\"values\", '{{}}'::jsonb)"
    " FROM (SELECT coalesce((SELECT user_id FROM identities WHERE anonymous_id = ${n}), ${n})"
    " AS id) AS u LEFT JOIN profiles AS p ON p.user_id = u.id"
    " LEFT JOIN computed_profiles AS c ON c.user_id = u.id)"
)


async def load_traits(conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """A user's traits, sent and computed; an unknown user has none."""
    return dict(await conn.scalar(select(whole_profile(user_id))) or {})


# A profile is read on every routed event and every message: it stays small. (Each
# message is at most 32 KB; without a bound, many would pile up in one profile.)
MAX_TRAITS = 500
MAX_PROFILE_BYTES = 256 * 1024
# The most push tokens a profile keeps (the newest): a device replaced is never told.
MAX_DEVICE_TOKENS = 20


class ProfileTooLarge(ValueError):
    """The traits would make the profile larger than a profile may be; nothing changed."""


async def merge_traits(
    conn: AsyncConnection,
    user_id: str,
    *,
    set: Mapping[str, Any],
    unset: Sequence[str] = (),
) -> None:
    """Set traits (later values win) and remove others, creating the profile if new;
    ProfileTooLarge (the caller's transaction then stores nothing) past the bounds.
    Each trait set remembers when (the newest wins when two profiles merge)."""
    changed = _times(set)
    merged = profiles.c.traits.op("||")(literal(dict(set), JSONB))
    times = profiles.c.trait_times.op("||")(changed)
    for key in unset:
        merged = merged.op("-")(literal(key))
        times = times.op("-")(literal(key))
    traits = profiles.c.traits
    size = (
        await conn.execute(
            insert(profiles)
            .values(user_id=user_id, traits=dict(set), trait_times=changed)
            .on_conflict_do_update(
                index_elements=[profiles.c.user_id],
                set_={"traits": merged, "trait_times": times, "updated_at": func.now()},
            )
            .returning(
                literal_column("(SELECT count(*) FROM jsonb_object_keys(profiles.traits))"),
                func.octet_length(traits.cast(Text)),
            )
        )
    ).one()
    if size[0] > MAX_TRAITS or size[1] > MAX_PROFILE_BYTES:
        raise ProfileTooLarge(
            f"user {user_id!r}'s profile would hold {size[0]} traits in {size[1]} bytes; "
            f"a profile holds at most {MAX_TRAITS} traits and {MAX_PROFILE_BYTES} bytes"
        )


def _times(traits: Mapping[str, Any]) -> Any:
    """`{trait: now}` for the traits given, as the transaction's time."""
    if not traits:
        return literal({}, JSONB)
    keys = literal(sorted(traits), ARRAY(Text))
    return (
        select(func.jsonb_object_agg(column("k"), func.to_jsonb(func.now())))
        .select_from(func.unnest(keys).alias("k"))
        .scalar_subquery()
    )


async def add_device_tokens(conn: AsyncConnection, tokens: Mapping[str, Sequence[str]]) -> None:
    """Add push tokens (`context.device.token`) to their users' profiles: every device a
    user is seen on gets their pushes (the `MAX_DEVICE_TOKENS` seen last)."""
    for user_id in sorted(tokens):  # a fixed order avoids deadlocks between requests
        have = await conn.scalar(
            select(profiles.c.traits["device_tokens"])
            .where(profiles.c.user_id == user_id)
            .with_for_update()
        )
        known = [t for t in have if isinstance(t, str)] if isinstance(have, list) else []
        seen = list(dict.fromkeys(tokens[user_id]))
        wanted = [*(t for t in known if t not in seen), *seen][-MAX_DEVICE_TOKENS:]
        if wanted != known:
            await merge_traits(conn, user_id, set={"device_tokens": wanted})
