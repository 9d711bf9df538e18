"""the transactional outbox: every fact, as it is written, also becomes a record to publish

Triggers on the tables that hold the facts write the outgoing record in the same
transaction as the fact, so a fact is never published without being stored nor stored
without being published. They write only once a relay has switched the outbox on
(`outbox_state.enabled`), so a workspace that publishes nothing keeps no outbox.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (table, function body) — each body builds `kind`, `fact`, `user_key`, `data` and
# calls outbox_put; `fact` is the record's stable id (a re-published record keeps it).
TRIGGERS = {
    "messages": """
        IF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status
           AND NEW.status IN ('sent', 'failed') THEN
          PERFORM outbox_put('message.' || NEW.status, 'message:' || NEW.id || ':' || NEW.status,
            NEW.user_id, coalesce(NEW.sent_at, now()), jsonb_build_object(
              'message_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
              'step', NEW.step, 'channel', NEW.channel, 'template', NEW.template,
              'category', NEW.category, 'error', NEW.error));
        END IF;""",
    "receipts": """
        PERFORM outbox_put('message.' || NEW.kind,
          'receipt:' || NEW.channel || ':' || NEW.webhook_id,
          (SELECT user_id FROM messages WHERE id = NEW.message_id), NEW.received_at,
          jsonb_build_object('message_id', NEW.message_id, 'channel', NEW.channel,
                             'receipt', NEW.payload));""",
    "arbitration_decisions": """
        PERFORM outbox_put('decision.made', 'decision:' || NEW.id, NEW.user_id, NEW.decided_at,
          jsonb_build_object('request', NEW.key, 'journey', NEW.journey, 'action', NEW.action,
                             'channel', NEW.channel, 'until', NEW.until, 'reason', NEW.reason,
                             'checks', NEW.checks));""",
    "enrollments": """
        IF TG_OP = 'INSERT' THEN
          PERFORM outbox_put('journey.entered', 'enrollment:' || NEW.id || ':entered',
            NEW.user_id, NEW.entered_at, jsonb_build_object(
              'enrollment_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
              'instance', NEW.instance, 'held_out', NEW.status = 'holdout'));
        ELSE
          IF NEW.status IS DISTINCT FROM OLD.status
             AND NEW.status IN ('completed', 'exited', 'converted') THEN
            PERFORM outbox_put('journey.ended', 'enrollment:' || NEW.id || ':ended',
              NEW.user_id, coalesce(NEW.ended_at, now()), jsonb_build_object(
                'enrollment_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
                'instance', NEW.instance, 'status', NEW.status, 'reason', NEW.end_reason));
          END IF;
          IF OLD.converted_at IS NULL AND NEW.converted_at IS NOT NULL THEN
            PERFORM outbox_put('journey.converted', 'enrollment:' || NEW.id || ':converted',
              NEW.user_id, NEW.converted_at, jsonb_build_object(
                'enrollment_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
                'instance', NEW.instance, 'value', NEW.conversion_value,
                'held_out', NEW.status = 'holdout'));
          END IF;
        END IF;""",
    "enrollment_steps": """
        IF NEW.outcome IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.outcome IS NULL) THEN
          PERFORM outbox_put('journey.step',
            'step:' || NEW.enrollment_id || ':' || NEW.step || ':' || NEW.visit,
            (SELECT user_id FROM enrollments WHERE id = NEW.enrollment_id), NEW.at,
            jsonb_build_object('enrollment_id', NEW.enrollment_id, 'step', NEW.step,
                               'kind', NEW.kind, 'visit', NEW.visit, 'outcome', NEW.outcome));
        END IF;""",
    "assignments": """
        PERFORM outbox_put('assignment.made', 'assignment:' || NEW.id, NEW.user_id,
          NEW.assigned_at, jsonb_build_object(
            'journey', NEW.journey_key, 'version', NEW.version, 'kind', NEW.kind,
            'experiment', NEW.experiment_key, 'mode', NEW.mode, 'arm', NEW.arm,
            'propensity', NEW.propensity, 'enrollment_id', NEW.enrollment_id));""",
}


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("fact", sa.Text(), nullable=False, unique=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text()),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", JSONB(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "outbox_unpublished_idx", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_table(
        "outbox_state",
        sa.Column("singleton", sa.Boolean(), primary_key=True, server_default=sa.text("true")),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.CheckConstraint("singleton", name="outbox_state_one_row"),
    )
    op.execute("INSERT INTO outbox_state (singleton, enabled) VALUES (true, false)")
    # (straight to the driver: the bodies hold colons that are not bind parameters)
    run = op.get_bind().exec_driver_sql
    run("""
        CREATE FUNCTION outbox_put(p_kind text, p_fact text, p_user text, p_at timestamptz,
                                   p_data jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
          IF (SELECT enabled FROM outbox_state) THEN
            INSERT INTO outbox (fact, kind, user_id, occurred_at, data)
            VALUES (p_fact, p_kind, p_user, p_at, p_data) ON CONFLICT (fact) DO NOTHING;
          END IF;
        END $$""")
    for table, body in TRIGGERS.items():
        run(f"""
            CREATE FUNCTION outbox_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN {body}
              RETURN NEW;
            END $$""")
        run(f"""
            CREATE TRIGGER outbox_{table} AFTER INSERT OR UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION outbox_{table}()""")


def downgrade() -> None:
    for table in TRIGGERS:
        op.execute(f"DROP TRIGGER outbox_{table} ON {table}")
        op.execute(f"DROP FUNCTION outbox_{table}()")
    op.execute("DROP FUNCTION outbox_put(text, text, text, timestamptz, jsonb)")
    op.drop_table("outbox_state")
    op.drop_table("outbox")
