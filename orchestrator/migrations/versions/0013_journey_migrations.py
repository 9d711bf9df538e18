"""moving users already inside a journey: each version's progress in telling them

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "journey_versions",
        sa.Column("migration_cursor", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "journey_versions", sa.Column("migrated_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("journey_versions", "migrated_at")
    op.drop_column("journey_versions", "migration_cursor")
