"""Everything held about a user (GDPR art. 15), as one JSON document written as it is read.

The document is an object with one member per kind of data, each a list of rows as
Postgres holds them (or an object, for the profile and computed traits):

    user_id, exported_at, ids          the user id and the anonymous ids / aliases linked
    profile, computed                  traits; computed traits, their state and segments
    identities, segment_memberships
    events                             every event stored for any of the ids
    messages, receipts, inbox          messages with their content; channel receipts;
                                       in-app inbox and web placement rows
    arbitration_requests, decisions    what asked to reach them, and every decision
    suppressions                       unsubscribes, bounces, complaints, do-not-contact
    enrollments, enrollment_steps      journeys entered and each step taken
    assignments                        holdouts, experiment arms, the global control
    facts                              outgoing records not yet published (the outbox)
    audit                              who read or changed their data

Postgres renders each row as JSON and a server-side cursor pages through each table,
so memory stays at one page whatever the user holds. One REPEATABLE READ transaction
makes the document a snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.users.identity import every_id

PAGE = 500

_MESSAGES = "SELECT id FROM messages WHERE user_id = ANY(:ids)"
_ENROLLMENTS = "SELECT id FROM enrollments WHERE user_id = ANY(:ids)"

# (member, query over :ids (every id) that returns one JSON text per row, in order)
SECTIONS: tuple[tuple[str, str], ...] = (
    ("identities", "SELECT * FROM identities WHERE user_id = ANY(:ids) "
                   "OR anonymous_id = ANY(:ids) ORDER BY created_at, anonymous_id"),
    ("merges", "SELECT * FROM identity_merges WHERE source = ANY(:ids) "
               "OR target = ANY(:ids) ORDER BY id"),
    ("segment_memberships", "SELECT * FROM segment_memberships WHERE user_id = ANY(:ids) "
                            "ORDER BY entered_at, id"),
    ("events", "SELECT * FROM events WHERE user_id = ANY(:ids) ORDER BY id"),
    ("messages", "SELECT * FROM messages WHERE user_id = ANY(:ids) ORDER BY created_at, id"),
    ("receipts", f"SELECT * FROM receipts WHERE message_id IN ({_MESSAGES}) "
                 "ORDER BY received_at, webhook_id"),
    ("inbox", "SELECT * FROM user_messages WHERE user_id = ANY(:ids) ORDER BY created_at"),
    ("arbitration_requests", "SELECT * FROM arbitration_requests WHERE user_id = ANY(:ids) "
                             "ORDER BY requested_at, key"),
    ("decisions", "SELECT * FROM arbitration_decisions WHERE user_id = ANY(:ids) ORDER BY id"),
    ("suppressions", "SELECT * FROM suppressions WHERE user_id = ANY(:ids) "
                     "ORDER BY created_at"),
    ("enrollments", "SELECT * FROM enrollments WHERE user_id = ANY(:ids) ORDER BY id"),
    ("enrollment_steps", f"SELECT * FROM enrollment_steps WHERE enrollment_id IN "
                         f"({_ENROLLMENTS}) ORDER BY id"),
    ("assignments", "SELECT * FROM assignments WHERE user_id = ANY(:ids) ORDER BY id"),
    ("facts", "SELECT id, fact, kind, occurred_at, data, created_at, published_at "
              "FROM outbox WHERE user_id = ANY(:ids) ORDER BY id"),
    ("audit", "SELECT * FROM audit_log WHERE subject = ANY(:ids) "
              "OR (actor_kind = 'user_token' AND actor = ANY(:ids)) ORDER BY id"),
)  # fmt: skip

_ONE = {
    "profile": "SELECT * FROM profiles WHERE user_id = :user",
    "computed": "SELECT * FROM computed_profiles WHERE user_id = :user",
}


def _as_json(query: str) -> str:
    return f"SELECT row_to_json(r)::text FROM ({query}) r"


async def stream(engine: AsyncEngine, user_id: str, *, now: datetime) -> AsyncIterator[bytes]:
    """The document, a piece at a time."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            # An id merged into another user exports that user (them, under another id).
            ids = await every_id(conn, user_id)
            head = {"user_id": ids[0], "exported_at": now.isoformat(), "ids": ids}
            yield orjson.dumps(head)[:-1]
            for member, query in _ONE.items():
                found = await conn.scalar(text(_as_json(query)), {"user": ids[0]})
                yield b',"' + member.encode() + b'":' + (found or "null").encode()
            for member, query in SECTIONS:
                yield b',"' + member.encode() + b'":['
                first = True
                result = await conn.stream(text(_as_json(query)), {"ids": ids})
                async for page in result.partitions(PAGE):
                    body = b",".join(row[0].encode() for row in page)
                    yield body if first else b"," + body
                    first = False
                yield b"]"
            yield b"}"
