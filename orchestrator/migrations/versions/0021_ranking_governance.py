"""ranking versions: a model card, a canary beside the active version, and a degraded flag

`card` holds what the columns do not: the features and parameters, the offline
metrics overall and by group, and the gate's figures (activations are read from the
audit log). A canary is served to `canary_share` of the users (within
`canary_segment`, a condition over `user`, when set) beside the active version; at
most one runs. An active version whose online click rate fell under the configured
floor is marked degraded, and the baseline answers instead until a person (or a
winning retrain) activates a version.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28 01:45:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ranking_models", sa.Column("card", JSONB, nullable=False, server_default="{}"))
    op.add_column("ranking_models", sa.Column("canary_share", sa.Float, nullable=True))
    op.add_column("ranking_models", sa.Column("canary_segment", sa.Text, nullable=True))
    op.add_column(
        "ranking_models", sa.Column("canary_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "ranking_models", sa.Column("degraded_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("ranking_models", sa.Column("degraded_reason", sa.Text, nullable=True))
    op.create_index(
        "ranking_models_one_canary",
        "ranking_models",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'canary'"),
    )


def downgrade() -> None:
    op.drop_index("ranking_models_one_canary", table_name="ranking_models")
    for column in (
        "degraded_reason", "degraded_at", "canary_since", "canary_segment", "canary_share", "card"
    ):  # fmt: skip
        op.drop_column("ranking_models", column)
