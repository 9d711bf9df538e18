"""the tracking plan: deployed versions, and violations counted under `mode: report`

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_now = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "tracking_plans",
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("plan", JSONB()),
        sa.Column("source", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    )
    op.create_table(
        "tracking_plan_violations",
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("example_message_id", sa.Text(), nullable=False),
        sa.Column("example_detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("plan_version", "day", "type", "event", "field", "problem"),
    )
    op.create_index("tracking_plan_violations_day_idx", "tracking_plan_violations", ["day"])


def downgrade() -> None:
    op.drop_table("tracking_plan_violations")
    op.drop_table("tracking_plans")
