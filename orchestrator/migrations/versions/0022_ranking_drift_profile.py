"""ranking models: the training profile input drift is measured against

What a version was trained on, binned (purchases over items by training popularity,
users' history lengths): `orchestrator.ranking.drift` compares live traffic with it.
Versions trained before have none and report "no training profile".

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-28 02:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0022"
# 0021 is taken by a change built beside this one; whichever lands second chains after it.
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "ranking_models",
        sa.Column("profile", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("ranking_models", "profile")
