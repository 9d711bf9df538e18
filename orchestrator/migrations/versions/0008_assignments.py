"""assignments: every randomised choice with its propensity; revenue of conversions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 14:40:00.000000

Bandit picks move over from experiment_assignments (without a propensity: it was not
logged); which of them were template variants is read from the journey versions.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("journey_key", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("experiment_key", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("enrollment_id", sa.BigInteger(), nullable=True),
        sa.Column("arm", sa.Text(), nullable=False),
        sa.Column("propensity", sa.Float(), nullable=True),
        sa.Column(
            "assigned_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "journey_key", "kind", "experiment_key", "user_id", name="assignments_first_key"
        ),
    )
    op.create_index(
        "assignments_arm_idx", "assignments", ["journey_key", "kind", "experiment_key", "arm"]
    )
    op.execute(
        """
        INSERT INTO assignments (journey_key, version, kind, experiment_key, mode, user_id,
            enrollment_id, arm, propensity, assigned_at)
        SELECT a.journey_key, e.version,
            CASE WHEN EXISTS (
                SELECT 1 FROM journey_versions v, jsonb_each(v.spec -> 'steps') AS s(id, step)
                WHERE v.journey_key = a.journey_key
                  AND s.step -> 'send' -> 'variants' ->> 'key' = a.experiment_key)
            THEN 'template' ELSE 'experiment' END,
            a.experiment_key, 'bandit', a.user_id, a.enrollment_id, a.variant, NULL,
            a.assigned_at
        FROM experiment_assignments AS a JOIN enrollments AS e ON e.id = a.enrollment_id
        """
    )
    op.drop_table("experiment_assignments")
    op.add_column("enrollments", sa.Column("conversion_value", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("enrollments", "conversion_value")
    op.create_table(
        "experiment_assignments",
        sa.Column("journey_key", sa.Text(), nullable=False),
        sa.Column("experiment_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("variant", sa.Text(), nullable=False),
        sa.Column("enrollment_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "assigned_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"]),
        sa.PrimaryKeyConstraint("journey_key", "experiment_key", "user_id"),
    )
    op.drop_table("assignments")
