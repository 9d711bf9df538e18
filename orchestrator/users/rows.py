"""A user's rows in every table that holds them, deleted in batches in foreign-key order.

`STEPS` is the order: a referencing table comes before the table it references
(receipts and inbox rows before messages, decisions before their requests, steps and
assignments before enrollments). Each step deletes at most `batch` rows per
statement, so a user with a million events never holds one long transaction, and a
step run again after a crash deletes what is left (deleting is idempotent).

The audit log is not deleted (it is the proof of who read what, erasure included): its
entries about the user are rewritten to name the keyed hash instead.
`tests/orchestrator/users/test_erasure.py` scans every table of the catalogue for the
ids afterwards, so a new table that holds user ids and is missing here fails it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class Step:
    name: str  # the table (and what the counts call it)
    sql: str  # changes at most :n rows of :ids (text[]), returns their count


def _delete(table: str, key: str, where: str) -> str:
    return f"""
        WITH doomed AS (SELECT {key} FROM {table} WHERE {where} LIMIT :n),
             gone AS (DELETE FROM {table} t USING doomed
                      WHERE ({", ".join(f"t.{k.strip()}" for k in key.split(","))})
                          = ({", ".join(f"doomed.{k.strip()}" for k in key.split(","))})
                      RETURNING 1)
        SELECT count(*) FROM gone"""


_OWN = "user_id = ANY(:ids)"
_MESSAGES = "message_id IN (SELECT id FROM messages WHERE user_id = ANY(:ids))"
_ENROLLMENTS = "enrollment_id IN (SELECT id FROM enrollments WHERE user_id = ANY(:ids))"

STEPS: tuple[Step, ...] = (
    Step("receipts", _delete("receipts", "channel, webhook_id", _MESSAGES)),
    Step("user_messages", _delete("user_messages", "message_id", f"{_OWN} OR {_MESSAGES}")),
    Step("messages", _delete("messages", "id", f"{_OWN} OR {_ENROLLMENTS}")),
    Step("arbitration_decisions", _delete("arbitration_decisions", "id", _OWN)),
    Step("arbitration_requests", _delete("arbitration_requests", "key", _OWN)),
    Step("assignments", _delete("assignments", "id", f"{_OWN} OR {_ENROLLMENTS}")),
    Step("enrollment_steps", _delete("enrollment_steps", "id", _ENROLLMENTS)),
    Step("enrollments", _delete("enrollments", "id", _OWN)),
    # Anonymous visitors' events name their profile (`anonymous:<id>`) like any user's.
    Step("events", _delete("events", "id", _OWN)),
    Step(
        "identities", _delete("identities", "anonymous_id", f"{_OWN} OR anonymous_id = ANY(:ids)")
    ),
    Step(
        "identity_merges",
        _delete("identity_merges", "id", "source = ANY(:ids) OR target = ANY(:ids)"),
    ),
    Step("profiles", _delete("profiles", "user_id", _OWN)),
    Step("computed_profiles", _delete("computed_profiles", "user_id", _OWN)),
    Step("segment_memberships", _delete("segment_memberships", "id", _OWN)),
    Step("suppressions", _delete("suppressions", "user_id, channel, category, reason", _OWN)),
    # Facts not yet published die with the user; published ones are the consumers' to erase.
    Step("outbox", _delete("outbox", "id", _OWN)),
    Step(
        "audit_log",
        """
        WITH named AS (SELECT id FROM audit_log
                       WHERE subject = ANY(:ids)
                          OR (actor_kind = 'user_token' AND actor = ANY(:ids)) LIMIT :n),
             done AS (UPDATE audit_log a
                      SET subject = CASE WHEN a.subject = ANY(:ids) THEN CAST(:alias AS text)
                                         ELSE a.subject END,
                          actor = CASE WHEN a.actor_kind = 'user_token' AND a.actor = ANY(:ids)
                                       THEN CAST(:alias AS text) ELSE a.actor END
                      FROM named WHERE a.id = named.id RETURNING 1)
        SELECT count(*) FROM done""",
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)


async def run_step(
    conn: AsyncConnection, step: Step, *, ids: Sequence[str], alias: str, batch: int
) -> int:
    """One batch of one step, in the caller's transaction: the rows it changed."""
    changed = await conn.scalar(text(step.sql), {"ids": list(ids), "n": batch, "alias": alias})
    return int(changed or 0)
