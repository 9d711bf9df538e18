"""What a retention run does to each kind of data, as SQL: which rows are past their
period, which of those are still needed (and so kept), and what happens to the rest.

Each step pages through its table oldest first, by an index on (time, key), under a
cursor: a page is at most `batch` rows, locked FOR UPDATE SKIP LOCKED (a row someone
is writing is left for the next run, never waited for), and changed in one short
transaction. Rows kept are passed by the cursor, so a run reads each old row once.

Only rows that nothing references are deleted (receipts, inbox copies, decisions before
their requests, assignments, events): messages and enrollments, which other tables
point at, stay, and a message only loses its body.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.retention.config import Kind

# A message (by its id, the arbitration key too) of a journey still running.
_RUNNING_MESSAGE = """EXISTS (SELECT 1 FROM messages AS rm JOIN enrollments AS re
    ON re.id = rm.enrollment_id WHERE rm.id = {key} AND re.status = 'active')"""


@dataclass(frozen=True, slots=True)
class Step:
    """One pass of a run over one table.

    `scan` selects a page after the cursor (`:at`, `:c0`, `:c1`...) older than
    `:cutoff`, as `at`, the key columns `k0`, `k1`... and `keep`; `{lock}` is where the
    row lock goes. Each `apply` statement takes the doomed keys as arrays (`:k0`...)
    and its row count is added under its name."""

    name: str
    kind: Kind
    alias: str  # the scanned table's alias, whose rows are locked
    scan: str
    apply: tuple[tuple[str, str], ...]
    keys: int = 1  # key columns
    first_key: tuple[str | int, ...] = ("",)  # the cursor before the first row
    # A dry run's count for an `apply` that does not change one row per key.
    dry_counts: tuple[tuple[str, str], ...] = ()

    def scan_sql(self, *, lock: bool) -> str:
        return self.scan.format(lock=f"FOR UPDATE OF {self.alias} SKIP LOCKED" if lock else "")


MESSAGE_BODIES = Step(
    name="message_bodies",
    kind="message_bodies",
    alias="m",
    # Kept: a running journey's messages (a retried send resends the recorded body) and
    # any still being sent.
    scan="""
        SELECT m.created_at AS at, m.id AS k0,
            (m.status = 'sending' OR EXISTS (SELECT 1 FROM enrollments AS en
                WHERE en.id = m.enrollment_id AND en.status = 'active')) AS keep
        FROM messages AS m
        WHERE m.created_at < :cutoff AND m.content <> '{{}}'::jsonb
            AND (m.created_at, m.id) > (:at, :c0)
        ORDER BY m.created_at, m.id LIMIT :limit {lock}""",
    apply=(
        (
            "blanked",
            "UPDATE messages SET content = '{}'::jsonb WHERE id = ANY(CAST(:k0 AS text[]))",
        ),
    ),
)

INBOX = Step(
    name="inbox",
    kind="message_bodies",
    alias="u",
    # In-app and web copies: kept until they expire, and while their journey runs.
    scan=f"""
        SELECT u.created_at AS at, u.message_id AS k0,
            (u.expires_at > :now OR {_RUNNING_MESSAGE.format(key="u.message_id")}) AS keep
        FROM user_messages AS u
        WHERE u.created_at < :cutoff AND (u.created_at, u.message_id) > (:at, :c0)
        ORDER BY u.created_at, u.message_id LIMIT :limit {{lock}}""",
    apply=(
        (
            "removed",
            "DELETE FROM user_messages WHERE message_id = ANY(CAST(:k0 AS text[]))",
        ),
    ),
)

RECEIPTS = Step(
    name="receipts",
    kind="receipts",
    alias="r",
    # Nothing reads a stored receipt back but replay protection (minutes: signatures
    # expire) and `ranking evaluate-logs` (clicks over its --since): none kept.
    scan="""
        SELECT r.received_at AS at, r.channel AS k0, r.webhook_id AS k1, false AS keep
        FROM receipts AS r
        WHERE r.received_at < :cutoff AND (r.received_at, r.channel, r.webhook_id) > (:at, :c0, :c1)
        ORDER BY r.received_at, r.channel, r.webhook_id LIMIT :limit {lock}""",
    apply=(
        (
            "removed",
            """DELETE FROM receipts AS r
               USING unnest(CAST(:k0 AS text[]), CAST(:k1 AS text[])) AS d(channel, webhook_id)
               WHERE r.channel = d.channel AND r.webhook_id = d.webhook_id""",
        ),
    ),
    keys=2,
    first_key=("", ""),
)

DECISIONS = Step(
    name="decisions",
    kind="decisions",
    alias="r",
    # A request and every decision about it go together, once its latest decision is
    # past the period. Kept: pending deferrals, sends inside the longest cap window,
    # requests whose conflict window may still hold a peer, and a running journey's
    # (a retried activity must get the same answer, not a second send).
    scan=f"""
        SELECT r.decided_at AS at, r.key AS k0,
            (r.state = 'pending' OR (r.state = 'sent' AND r.decided_at >= :contacts_since)
             OR r.window_end >= :peers_since
             OR {_RUNNING_MESSAGE.format(key="r.key")}) AS keep
        FROM arbitration_requests AS r
        WHERE r.decided_at < :cutoff AND (r.decided_at, r.key) > (:at, :c0)
        ORDER BY r.decided_at, r.key LIMIT :limit {{lock}}""",
    dry_counts=(
        (
            "removed",
            "SELECT count(*) FROM arbitration_decisions WHERE key = ANY(CAST(:k0 AS text[]))",
        ),
    ),
    apply=(
        ("removed", "DELETE FROM arbitration_decisions WHERE key = ANY(CAST(:k0 AS text[]))"),
        (
            "requests_removed",
            "DELETE FROM arbitration_requests WHERE key = ANY(CAST(:k0 AS text[]))",
        ),
    ),
)

ASSIGNMENTS = Step(
    name="assignments",
    kind="assignments",
    alias="a",
    # Kept: every assignment of an experiment not yet ended (no archive; the global
    # control group while the workspace keeps one), and a running journey's.
    scan="""
        SELECT a.assigned_at AS at, a.id AS k0,
            ((NOT EXISTS (SELECT 1 FROM experiment_archives AS x
                  WHERE x.journey_key = a.journey_key AND x.experiment_key = a.experiment_key)
              AND (a.kind <> 'global_control' OR :global_control))
             OR EXISTS (SELECT 1 FROM enrollments AS en
                  WHERE en.id = a.enrollment_id AND en.status = 'active')) AS keep
        FROM assignments AS a
        WHERE a.assigned_at < :cutoff AND (a.assigned_at, a.id) > (:at, :c0)
        ORDER BY a.assigned_at, a.id LIMIT :limit {lock}""",
    apply=(("removed", "DELETE FROM assignments WHERE id = ANY(CAST(:k0 AS bigint[]))"),),
    first_key=(0,),
)

EVENTS = Step(
    name="events",
    kind="events",
    alias="e",
    # Kept: events not yet routed (the sweeper still owes them to journeys) and the
    # trigger events of running journeys ("why is this user inside?").
    scan="""
        SELECT e.received_at AS at, e.id AS k0,
            (e.routed_at IS NULL OR EXISTS (SELECT 1 FROM enrollments AS en
                WHERE en.status = 'active' AND en.trigger_message_id = e.message_id)) AS keep
        FROM events AS e
        WHERE e.received_at < :cutoff AND (e.received_at, e.id) > (:at, :c0)
        ORDER BY e.received_at, e.id LIMIT :limit {lock}""",
    apply=(("removed", "DELETE FROM events WHERE id = ANY(CAST(:k0 AS bigint[]))"),),
    first_key=(0,),
)

# Children before anything they might point at; the biggest table last.
STEPS: tuple[Step, ...] = (MESSAGE_BODIES, INBOX, RECEIPTS, DECISIONS, ASSIGNMENTS, EVENTS)
