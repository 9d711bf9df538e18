"""the outbox: `user.merged` when a profile is merged into a user (identify, alias)

A data platform that keys its own tables by user id learns that one id now counts for
another. A merge moved again (a journey step's late writes) is a second record with its
own id: consumers that apply it twice change nothing.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-28 00:30:00.000000
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (straight to the driver: the bodies hold colons that are not bind parameters)
    run = op.get_bind().exec_driver_sql
    run("""
        CREATE FUNCTION outbox_identity_merges() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM outbox_put('user.merged', 'merge:' || NEW.id, NEW.target, NEW.merged_at,
            jsonb_build_object('merged_from', NEW.source));
          RETURN NEW;
        END $$""")
    run("""
        CREATE TRIGGER outbox_identity_merges AFTER INSERT ON identity_merges
        FOR EACH ROW EXECUTE FUNCTION outbox_identity_merges()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_identity_merges ON identity_merges")
    op.execute("DROP FUNCTION outbox_identity_merges()")
