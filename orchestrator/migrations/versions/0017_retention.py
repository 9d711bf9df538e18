"""retention: a row per run, and the indexes that find each kind's oldest rows

The indexes are built CONCURRENTLY (outside the migration's transaction), so a large
events table keeps taking writes while they build; a build that failed leaves an
invalid index, dropped and built again by running the migration again.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# name -> (table, columns and predicate)
INDEXES = {
    "events_received_idx": "events (received_at, id)",
    "enrollments_active_trigger_idx": ("enrollments (trigger_message_id) WHERE status = 'active'"),
    "messages_body_idx": "messages (created_at, id) WHERE content <> '{}'::jsonb",
    "user_messages_created_idx": "user_messages (created_at, message_id)",
    "receipts_received_idx": "receipts (received_at, channel, webhook_id)",
    "arbitration_requests_decided_idx": "arbitration_requests (decided_at, key)",
    "assignments_assigned_idx": "assignments (assigned_at, id)",
}


def upgrade() -> None:
    empty = sa.text("'{}'::jsonb")
    op.create_table(
        "retention_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("workflow_id", sa.Text(), nullable=False, unique=True),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cutoffs", JSONB(), nullable=False),
        sa.Column("counts", JSONB(), nullable=False, server_default=empty),
        sa.Column("progress", JSONB(), nullable=False, server_default=empty),
    )
    op.create_index("retention_runs_started_idx", "retention_runs", ["started_at"])
    with op.get_context().autocommit_block():
        for name, target in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {target}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    op.drop_table("retention_runs")
