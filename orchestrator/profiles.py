"""User profiles: traits merged from identify calls, event context and journey steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import profiles


async def load_traits(conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """A user's traits; an unknown user has none."""
    traits = await conn.scalar(select(profiles.c.traits).where(profiles.c.user_id == user_id))
    return dict(traits or {})


async def merge_traits(
    conn: AsyncConnection,
    user_id: str,
    *,
    set: Mapping[str, Any],
    unset: Sequence[str] = (),
) -> None:
    """Set traits (later values win) and remove others, creating the profile if new."""
    merged = profiles.c.traits.op("||")(literal(dict(set), JSONB))
    for key in unset:
        merged = merged.op("-")(literal(key))
    await conn.execute(
        insert(profiles)
        .values(user_id=user_id, traits=dict(set))
        .on_conflict_do_update(
            index_elements=[profiles.c.user_id],
            set_={"traits": merged, "updated_at": func.now()},
        )
    )
