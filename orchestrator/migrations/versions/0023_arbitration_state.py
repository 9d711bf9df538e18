"""arbitration: one round trip that locks the user and loads what a decision reads

`arbitration_state(key, user, contacts_since, peers_since)` takes the per-user lock
(`rules.store.lock_user`'s), follows the user to the one they were merged into and
locks that one too, then reads the profile, any earlier answer to this key, the
contact history, the standing suppressions and the conflict-window peers. Each
statement of a PL/pgSQL function takes its own snapshot, so what it reads after the
lock includes everything the lock's previous holder committed; one SQL statement
taking the lock and reading would read from before the lock.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-28 02:30:00.000000
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

STATE = """
CREATE OR REPLACE FUNCTION arbitration_state(
    p_key text, p_user text, p_contacts_since timestamptz, p_peers_since timestamptz,
    OUT user_id text, OUT traits jsonb, OUT prior json, OUT last json, OUT contacts json,
    OUT suppressions json, OUT peers json)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('arbitration' || chr(31) || p_user, 0));
  -- Read after the lock: a merge of this user holds it, so one that was under way has
  -- committed by now, and whom the user belongs to is current.
  user_id := coalesce((SELECT i.user_id FROM identities i WHERE i.anonymous_id = p_user),
                      p_user);
  IF user_id <> p_user THEN
    PERFORM pg_advisory_xact_lock(hashtextextended('arbitration' || chr(31) || user_id, 0));
  END IF;
  SELECT coalesce((SELECT p.traits FROM profiles p WHERE p.user_id = arbitration_state.user_id),
                  '{}'::jsonb)
         || coalesce((SELECT c."values" FROM computed_profiles c
                      WHERE c.user_id = arbitration_state.user_id), '{}'::jsonb),
    (SELECT row_to_json(r) FROM arbitration_requests r WHERE r.key = p_key),
    (SELECT row_to_json(d) FROM arbitration_decisions d WHERE d.key = p_key
       ORDER BY d.id DESC LIMIT 1),
    (SELECT coalesce(json_agg(json_build_object(
              'key', r.key, 'channel', r.channel, 'sent_at', r.decided_at,
              'request', r.request) ORDER BY r.decided_at DESC), '[]')
       FROM arbitration_requests r
       WHERE r.user_id = arbitration_state.user_id AND r.state = 'sent'
         AND r.decided_at > p_contacts_since),
    (SELECT coalesce(json_agg(json_build_object(
              'reason', s.reason, 'channel', s.channel, 'category', s.category)), '[]')
       FROM suppressions s WHERE s.user_id = arbitration_state.user_id),
    (SELECT coalesce(json_agg(json_build_object(
              'request', r.request, 'window_end', r.window_end)), '[]')
       FROM arbitration_requests r
       WHERE r.user_id = arbitration_state.user_id AND r.key <> p_key
         AND r.state NOT IN ('released', 'suppressed')
         AND r.window_end >= LEAST(p_peers_since,
               (SELECT own.window_end FROM arbitration_requests own WHERE own.key = p_key)))
  INTO traits, prior, last, contacts, suppressions, peers;
END $$"""


def upgrade() -> None:
    op.get_bind().exec_driver_sql(STATE)  # the body holds colons that are not parameters


def downgrade() -> None:
    op.get_bind().exec_driver_sql(
        "DROP FUNCTION IF EXISTS arbitration_state(text, text, timestamptz, timestamptz)"
    )
