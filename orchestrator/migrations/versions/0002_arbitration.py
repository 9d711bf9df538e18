"""arbitration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 17:56:57.890531
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arbitration_requests",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(
        "arbitration_requests_user_idx",
        "arbitration_requests",
        ["user_id", "decided_at"],
        unique=False,
    )
    op.create_table(
        "suppressions",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "channel", "category", "reason"),
    )
    op.create_table(
        "arbitration_decisions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("journey", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("checks", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["key"],
            ["arbitration_requests.key"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "arbitration_decisions_key_idx", "arbitration_decisions", ["key", "id"], unique=False
    )
    op.create_index(
        "arbitration_decisions_user_idx",
        "arbitration_decisions",
        ["user_id", "decided_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("arbitration_decisions_user_idx", table_name="arbitration_decisions")
    op.drop_index("arbitration_decisions_key_idx", table_name="arbitration_decisions")
    op.drop_table("arbitration_decisions")
    op.drop_table("suppressions")
    op.drop_index("arbitration_requests_user_idx", table_name="arbitration_requests")
    op.drop_table("arbitration_requests")
