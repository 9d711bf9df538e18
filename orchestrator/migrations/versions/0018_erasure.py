"""erasure: the suppression list of erased ids (keyed hashes), erasure requests, and the key

`erasures` holds one row per erasure (the keyed hash of the user id it was asked for,
its state and, until it finishes, the ids it covers); `erased_ids` is the suppression
list that ingestion checks (one keyed hash per id an erasure covered); `erasure_key` is
this installation's random HMAC key. Events of users known only by an anonymous id are
found by a partial index (identified events have `user_id` and use its index).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_key",
        sa.Column("singleton", sa.Boolean(), primary_key=True, server_default=sa.text("true")),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("singleton", name="erasure_key_one_row"),
    )
    # 32 bytes from two v4 UUIDs (gen_random_uuid draws from a strong random source).
    op.execute(
        "INSERT INTO erasure_key (singleton, key) VALUES (true, decode(replace("
        "gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))"
    )
    op.create_table(
        "erasures",
        sa.Column("hash", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text()),
        sa.Column("ids", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("restored_at", sa.DateTime(timezone=True)),
        sa.Column("counts", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_table(
        "erased_ids",
        sa.Column("hash", sa.Text(), primary_key=True),
        sa.Column("erasure", sa.Text(), sa.ForeignKey("erasures.hash"), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("erased_ids_erasure_idx", "erased_ids", ["erasure"])


def downgrade() -> None:
    op.drop_table("erased_ids")
    op.drop_table("erasures")
    op.drop_table("erasure_key")
