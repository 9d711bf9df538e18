"""the outbox: `message.sent` also when a receipt came first, receipts at their own time

A delivery receipt can reach us before the worker records the send (the status is then
`delivered`, never `sent`): `message.sent` now follows `sent_at` being set. A receipt's
fact happened when the channel system says it did (capped at its arrival), not when
it arrived.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 22:45:00.000000
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

MESSAGES = """
CREATE OR REPLACE FUNCTION outbox_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.sent_at IS NULL AND NEW.sent_at IS NOT NULL THEN
    PERFORM outbox_put('message.sent', 'message:' || NEW.id || ':sent', NEW.user_id,
      NEW.sent_at, jsonb_build_object(
        'message_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
        'step', NEW.step, 'channel', NEW.channel, 'template', NEW.template,
        'category', NEW.category, 'error', NULL));
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed' THEN
    PERFORM outbox_put('message.failed', 'message:' || NEW.id || ':failed', NEW.user_id, now(),
      jsonb_build_object(
        'message_id', NEW.id, 'journey', NEW.journey_key, 'version', NEW.version,
        'step', NEW.step, 'channel', NEW.channel, 'template', NEW.template,
        'category', NEW.category, 'error', NEW.error));
  END IF;
  RETURN NEW;
END $$"""

RECEIPTS = """
CREATE OR REPLACE FUNCTION outbox_receipts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM outbox_put('message.' || NEW.kind,
    'receipt:' || NEW.channel || ':' || NEW.webhook_id,
    (SELECT user_id FROM messages WHERE id = NEW.message_id),
    LEAST(coalesce((NEW.payload -> 'data' ->> 'occurred_at')::timestamptz,
                   (NEW.payload ->> 'timestamp')::timestamptz, NEW.received_at),
          NEW.received_at),
    jsonb_build_object('message_id', NEW.message_id, 'channel', NEW.channel,
                       'receipt', NEW.payload));
  RETURN NEW;
END $$"""


def upgrade() -> None:
    run = op.get_bind().exec_driver_sql  # the bodies hold colons that are not parameters
    run(MESSAGES)
    run(RECEIPTS)


def downgrade() -> None:
    # These functions fit 0014's tables as they are: a downgrade keeps them.
    pass
