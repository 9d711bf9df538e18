"""The audit log: who wrote the catalogue, deployed journeys, read a user's data, or
switched ranking model versions.

Rows are only ever added. Actors are a server API key (by name), a user token (by the
user it names), a source write key, a person at the command line (`cli`, with the
operating-system user), or the product itself (`system`: a scheduled retraining, the
ranking guard's automatic rollback).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.tables import audit_log

ActorKind = Literal["server_key", "user_token", "write_key", "cli", "system"]


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    name: str
    client: str | None = None  # the caller's address, when it came over HTTP


def command_line() -> Actor:
    """The person running a command."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor("cli", who)


async def record(
    conn: AsyncConnection,
    actor: Actor,
    action: str,
    *,
    subject: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: datetime,
) -> None:
    """Add one entry, in the caller's transaction (so it stands or falls with the act)."""
    await conn.execute(
        insert(audit_log).values(
            at=now,
            actor_kind=actor.kind,
            actor=actor.name,
            action=action,
            subject=subject,
            details=dict(details or {}),
            client=actor.client,
        )
    )


async def entries(
    conn: AsyncConnection,
    *,
    subject: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Entries newest first; `before_id` continues a page."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if subject is not None:
        query = query.where(audit_log.c.subject == subject)
    if actor is not None:
        query = query.where(audit_log.c.actor == actor)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    return [dict(r._mapping) for r in await conn.execute(query)]
