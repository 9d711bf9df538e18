"""installation: this database's random id, the namespace of message ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("singleton", name="installation_one_row"),
        sa.PrimaryKeyConstraint("singleton"),
    )
    # Made with the database, so that every installation has its own.
    op.execute("INSERT INTO installation DEFAULT VALUES")


def downgrade() -> None:
    op.drop_table("installation")
