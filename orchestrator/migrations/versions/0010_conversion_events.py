"""the event that converted an enrollment, and indexes for reports and alerts

One goal event converts every enrollment of the user that waits for it; storing its id
lets revenue across journeys count each purchase once. The indexes serve the global
control group's outcomes (a user's converted enrollments) and the alert checks (the
last day's entries and conversions, the last hour's messages).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 16:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("enrollments", sa.Column("conversion_event_id", sa.BigInteger(), nullable=True))
    op.create_index(
        "enrollments_converted_user_idx",
        "enrollments",
        ["user_id", "id"],
        postgresql_where=sa.text("converted_at IS NOT NULL"),
    )
    op.create_index(
        "enrollments_converted_at_idx",
        "enrollments",
        ["converted_at"],
        postgresql_where=sa.text("converted_at IS NOT NULL"),
    )
    op.create_index("enrollments_entered_at_idx", "enrollments", ["entered_at"])
    op.create_index("messages_created_at_idx", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("messages_created_at_idx", table_name="messages")
    op.drop_index("enrollments_entered_at_idx", table_name="enrollments")
    op.drop_index("enrollments_converted_at_idx", table_name="enrollments")
    op.drop_index("enrollments_converted_user_idx", table_name="enrollments")
    op.drop_column("enrollments", "conversion_event_id")
