"""The suppression list: keyed hashes of erased ids, and the ingestion check against it.

An erased id is kept only as HMAC-SHA256 under this installation's random key
(`erasure_key`, made by migration 0018). A bare SHA-256 of an email or a numeric id is
reversed by hashing guesses; a keyed hash is not, unless the guesser also holds the
key. So the hashes can name erasures where the key is not (the workflow id
`erase:<hash>` in Temporal, audit entries, logs) without naming the user. Someone with
the whole database can still test a guess; the key must be backed up with the list
(lose it and the list no longer matches anything).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.tables import erased_ids, erasure_key, erasures
from orchestrator.tracking import Incoming
from orchestrator.users.identity import anonymous_profile

log = logging.getLogger(__name__)

PREFIX = "erased:"  # how audit entries name an erased user: by hash, never by id


class ErasedIds:
    """The installation's key (read once per process) and the list it keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def key(self) -> bytes:
        async with self._lock:
            if self._key is None:
                self._key = await self._read()
            return self._key

    async def _read(self) -> bytes:
        # The migration made it; a database emptied since (the tests empty every table)
        # gets a new one here, with nothing on its list yet.
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(erasure_key)
                .values(singleton=True, key=secrets.token_bytes(32))
                .on_conflict_do_nothing()
            )
            key: bytes = (await conn.execute(select(erasure_key.c.key))).scalar_one()
        return key

    async def hash(self, user_id: str) -> str:
        return keyed_hash(await self.key(), user_id)

    async def drop_erased(
        self, conn: AsyncConnection, batch: Sequence[Incoming], *, insert_checks_users: bool = False
    ) -> list[Incoming]:
        """The batch without the events of erased users: at most one query per batch. A
        message counts for its userId if it has one (an erased anonymous id on it, the
        device an erased visitor used, is taken off and the message kept), else for its
        anonymous visitor; an alias from an erased id is dropped. Dropped events are
        counted in the log, never named.

        `insert_checks_users`: messages that name a user and no other id are left in,
        for `store_events` to check as it inserts them (its `erased_key`): the common
        batch then costs no query here."""
        if not batch:
            return []
        key = await self.key()
        hashes: dict[str, str] = {}
        for item in batch:
            if insert_checks_users and only_user(item):
                continue
            for value in _ids(item):
                if value not in hashes:
                    hashes[value] = keyed_hash(key, value)
        if not hashes:
            return list(batch)
        listed = set(
            (
                await conn.execute(
                    select(erased_ids.c.hash).where(erased_ids.c.hash.in_(set(hashes.values())))
                )
            ).scalars()
        )
        if not listed:
            return list(batch)

        def erased(value: str | None) -> bool:
            return value is not None and value in hashes and hashes[value] in listed

        kept: list[Incoming] = []
        for item in batch:
            device = anonymous_profile(item.anonymous_id) if item.anonymous_id else None
            if erased(item.user_id) or (item.user_id is None and erased(device)):
                continue
            if item.previous_id and any(map(erased, _ids(item)[-2:])):
                continue
            kept.append(replace(item, anonymous_id=None) if erased(device) else item)
        if dropped := len(batch) - len(kept):
            log.info("dropped %d event(s) of erased users", dropped)
        return kept


def only_user(item: Incoming) -> bool:
    """A message that names its user and no other id (most server-side traffic)."""
    return item.user_id is not None and not item.anonymous_id and not item.previous_id


def _ids(item: Incoming) -> list[str]:
    """The profile ids a message names (as `identities` and the list hold them): its
    user, its anonymous visitor's profile, and an alias's previous id either way."""
    found = [item.user_id] if item.user_id else []
    if item.anonymous_id:
        found.append(anonymous_profile(item.anonymous_id))
    if item.previous_id:
        found += [item.previous_id, anonymous_profile(item.previous_id)]
    return found


def keyed_hash(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def subject(hashed: str) -> str:
    """How the audit log names an erased user."""
    return PREFIX + hashed


async def list_ids(
    conn: AsyncConnection, *, key: bytes, erasure: str, ids: Iterable[str], now: datetime
) -> None:
    """Put ids on the list (for the erasure whose hash is `erasure`); idempotent."""
    rows = [{"hash": keyed_hash(key, i), "erasure": erasure, "added_at": now} for i in set(ids)]
    if rows:
        stmt = insert(erased_ids).values(sorted(rows, key=lambda r: str(r["hash"])))
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[erased_ids.c.hash], set_={"erasure": stmt.excluded.erasure}
            )
        )


class NotRestorable(Exception):
    """The id was never erased, is being erased, or was restored already."""


async def restore(conn: AsyncConnection, *, erasure: str, now: datetime) -> None:
    """Take a finished erasure's ids off the list (a new explicit consent)."""
    status = await conn.scalar(
        select(erasures.c.status).where(erasures.c.hash == erasure).with_for_update()
    )
    if status != "erased":
        raise NotRestorable(
            "this id was never erased"
            if status is None
            else f"this id's erasure is {status}: only a finished erasure can be restored"
        )
    await conn.execute(
        update(erasures)
        .where(erasures.c.hash == erasure)
        .values(status="restored", restored_at=now)
    )
    await conn.execute(delete(erased_ids).where(erased_ids.c.erasure == erasure))
