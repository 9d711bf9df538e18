"""computed traits, segments and audience runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 17:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_now = sa.text("now()")
_empty = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.create_table(
        "segment_definitions",
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("definitions", JSONB(), nullable=False),
        sa.Column("sources", JSONB(), nullable=False, server_default=_empty),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("backfill_cursor", sa.Text()),
        sa.Column("backfilled_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "computed_profiles",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("state", JSONB(), nullable=False, server_default=_empty),
        sa.Column("values", JSONB(), nullable=False, server_default=_empty),
        sa.Column("changed_at", JSONB(), nullable=False, server_default=_empty),
        sa.Column("segments", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("computed_at", sa.DateTime(timezone=True)),
        sa.Column("next_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "computed_profiles_due_idx",
        "computed_profiles",
        ["next_at"],
        postgresql_where=sa.text("next_at IS NOT NULL"),
    )
    op.create_table(
        "segment_memberships",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("segment_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exited_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "segment_memberships_current_key",
        "segment_memberships",
        ["segment_key", "user_id"],
        unique=True,
        postgresql_where=sa.text("exited_at IS NULL"),
    )
    op.create_index(
        "segment_memberships_user_idx", "segment_memberships", ["segment_key", "user_id"]
    )
    op.create_index(
        "segment_memberships_entered_idx", "segment_memberships", ["segment_key", "entered_at"]
    )
    op.create_index(
        "segment_memberships_exited_idx", "segment_memberships", ["segment_key", "exited_at"]
    )
    op.create_table(
        "audience_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("journey_key", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("segment_key", sa.Text(), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("members", sa.Integer()),
        sa.Column("entered", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.UniqueConstraint("journey_key", "scheduled_for", name="audience_runs_once"),
    )


def downgrade() -> None:
    for table in ("audience_runs", "segment_memberships", "computed_profiles",
                  "segment_definitions"):  # fmt: skip
        op.drop_table(table)
