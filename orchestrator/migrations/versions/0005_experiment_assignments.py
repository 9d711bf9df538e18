"""experiment assignments: bandit variants per user, for stickiness and conversion counts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 20:19:00.545345
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_assignments",
        sa.Column("journey_key", sa.Text(), nullable=False),
        sa.Column("experiment_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("variant", sa.Text(), nullable=False),
        sa.Column("enrollment_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "assigned_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["enrollments.id"],
        ),
        sa.PrimaryKeyConstraint("journey_key", "experiment_key", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("experiment_assignments")
