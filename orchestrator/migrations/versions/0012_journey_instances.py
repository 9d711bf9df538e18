"""keyed journeys: an enrollment's instance key, one active enrollment per instance

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 21:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "enrollments", sa.Column("instance", sa.Text(), nullable=False, server_default="")
    )
    op.drop_index("enrollments_one_active", table_name="enrollments")
    op.create_index(
        "enrollments_one_active",
        "enrollments",
        ["journey_key", "user_id", "instance"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("enrollments_one_active", table_name="enrollments")
    op.create_index(
        "enrollments_one_active",
        "enrollments",
        ["journey_key", "user_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_column("enrollments", "instance")
