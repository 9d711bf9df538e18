"""User profiles: traits merged from identify calls, event context and journey steps, and
overlaid with the computed traits (`orchestrator.segments`) wherever they are read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ScalarSelect, Text, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB, insert
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
WHOLE_PROFILE_SQL = (
    "(coalesce((SELECT traits FROM profiles WHERE user_id = ${n}), '{{}}'::jsonb)"
    " || coalesce((SELECT \"values\" FROM computed_profiles WHERE user_id = ${n}), '{{}}'::jsonb))"
)


async def load_traits(conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """A user's traits, sent and computed; an unknown user has none."""
    return dict(await conn.scalar(select(whole_profile(user_id))) or {})


# A profile is read on every routed event and every message: it stays small. (Each
# message is at most 32 KB; without a bound, many would pile up in one profile.)
MAX_TRAITS = 500
MAX_PROFILE_BYTES = 256 * 1024


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
    ProfileTooLarge (the caller's transaction then stores nothing) past the bounds."""
    merged = profiles.c.traits.op("||")(literal(dict(set), JSONB))
    for key in unset:
        merged = merged.op("-")(literal(key))
    traits = profiles.c.traits
    size = (
        await conn.execute(
            insert(profiles)
            .values(user_id=user_id, traits=dict(set))
            .on_conflict_do_update(
                index_elements=[profiles.c.user_id],
                set_={"traits": merged, "updated_at": func.now()},
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
