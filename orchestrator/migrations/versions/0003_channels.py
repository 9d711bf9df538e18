"""channels: receipts, in-app and web messages, the catalogue, message lifecycle

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 18:57:50.608916
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_items",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("available", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "receipts",
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("channel", "webhook_id"),
    )
    op.create_index("receipts_message_idx", "receipts", ["message_id"], unique=False)
    op.create_table(
        "user_messages",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("placement", sa.Text(), nullable=True),
        sa.Column("content", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dismissed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index(
        "user_messages_inbox_idx",
        "user_messages",
        ["user_id", "channel", "placement", "created_at"],
        unique=False,
    )
    op.add_column("messages", sa.Column("category", sa.Text(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("content_source", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("messages", sa.Column("provider_message_id", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("bounce_type", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("bounced_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("complained_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "messages", sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Until now "delivered" meant "the provider accepted it"; receipts now say delivered.
    op.execute(
        "UPDATE messages SET status = 'sent', sent_at = delivered_at, delivered_at = NULL"
        " WHERE status = 'delivered'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE messages SET status = 'delivered', delivered_at = sent_at"
        " WHERE status IN ('sent', 'delivered', 'bounced')"
    )
    op.drop_column("messages", "unsubscribed_at")
    op.drop_column("messages", "complained_at")
    op.drop_column("messages", "bounced_at")
    op.drop_column("messages", "clicked_at")
    op.drop_column("messages", "opened_at")
    op.drop_column("messages", "sent_at")
    op.drop_column("messages", "bounce_type")
    op.drop_column("messages", "provider_message_id")
    op.drop_column("messages", "content_source")
    op.drop_column("messages", "category")
    op.drop_index("user_messages_inbox_idx", table_name="user_messages")
    op.drop_table("user_messages")
    op.drop_index("receipts_message_idx", table_name="receipts")
    op.drop_table("receipts")
    op.drop_table("catalog_items")
