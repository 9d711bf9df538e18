"""identity resolution: anonymous profiles, merges that running journeys follow

Anonymous visitors get a profile of their own, `anonymous:<anonymousId>`, so their
traits are kept and their events can start journeys. `identities` now maps any profile
id merged away (an anonymous one, or a known user aliased to another) to the user it
was merged into. A trait's last change is kept per trait (`profiles.trait_times`: the
newest wins when two profiles merge). An enrollment that moved with a merge keeps the
workflow it runs in (`enrollments.workflow_id`). `identity_merges` lists merges whose
running journeys still have to be told.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27 23:10:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

INDEXES = {
    "enrollments_user_id_idx": "enrollments (user_id)",
    "assignments_user_idx": "assignments (user_id)",
    "segment_memberships_user_id_idx": "segment_memberships (user_id)",
}


def upgrade() -> None:
    op.add_column(
        "profiles",
        sa.Column("trait_times", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column("enrollments", sa.Column("workflow_id", sa.Text()))
    op.create_table(
        "identity_merges",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workflows", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("told_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "identity_merges_untold_idx",
        "identity_merges",
        ["merged_at"],
        postgresql_where=sa.text("told_at IS NULL"),
    )
    # Anonymous events stored so far belong to the user their anonymous id was linked to
    # (identify or alias before this release), else to their anonymous profile.
    op.execute(
        "UPDATE identities SET anonymous_id = 'anonymous:' || anonymous_id"
        " WHERE anonymous_id NOT LIKE 'anonymous:%'"
    )
    op.execute(
        "UPDATE events SET user_id = coalesce((SELECT i.user_id FROM identities AS i"
        " WHERE i.anonymous_id = 'anonymous:' || events.anonymous_id),"
        " 'anonymous:' || anonymous_id)"
        " WHERE user_id IS NULL AND anonymous_id IS NOT NULL"
    )
    # A merge moves a user's rows by user id: these tables had no index leading with it.
    with op.get_context().autocommit_block():
        for name, target in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {target}")


def downgrade() -> None:
    op.execute("UPDATE events SET user_id = NULL WHERE user_id LIKE 'anonymous:%'")
    op.execute(
        "UPDATE identities SET anonymous_id = substr(anonymous_id, 11)"
        " WHERE anonymous_id LIKE 'anonymous:%'"
    )
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    op.drop_index("identity_merges_untold_idx", table_name="identity_merges")
    op.drop_table("identity_merges")
    op.drop_column("enrollments", "workflow_id")
    op.drop_column("profiles", "trait_times")
