"""A small history to retain from: for each kind, rows past their period that must go,
rows past it that something still needs, and recent rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

NOW = datetime(2027, 6, 1, 12, tzinfo=UTC)

# What the seed's rows are, by the ids the tests look for.
STATEMENTS = [
    "INSERT INTO journeys (key, name, current_version, active) VALUES ('welcome', 'W', 1, true)",
    # enrollment 1 runs still (entered long ago), 2 ended long ago
    """INSERT INTO enrollments (id, journey_key, version, user_id, status, trigger_message_id,
           entered_at, ended_at) VALUES
       (1, 'welcome', 1, 'u1', 'active', 'ev-trigger-running', :old, NULL),
       (2, 'welcome', 1, 'u2', 'completed', 'ev-trigger-ended', :old, :old)""",
    """INSERT INTO events (id, message_id, source, type, event, user_id, timestamp,
           received_at, routed_at) VALUES
       (1, 'ev-old', 'test', 'track', 'Viewed', 'u2', :old, :old, :old),
       (2, 'ev-unrouted', 'test', 'track', 'Viewed', 'u2', :old, :old, NULL),
       (3, 'ev-trigger-running', 'test', 'track', 'Signed Up', 'u1', :old, :old, :old),
       (4, 'ev-trigger-ended', 'test', 'track', 'Signed Up', 'u2', :old, :old, :old),
       (5, 'ev-recent', 'test', 'track', 'Viewed', 'u2', :recent, :recent, :recent)""",
    """INSERT INTO messages (id, enrollment_id, journey_key, version, user_id, step, channel,
           template, status, content, created_at, sent_at) VALUES
       ('m-running', 1, 'welcome', 1, 'u1', 's', 'email', 'hello', 'sent',
        '{"subject": "Hi Ada"}', :old, :old),
       ('m-ended', 2, 'welcome', 1, 'u2', 's', 'in_app', 'hello', 'sent',
        '{"title": "Hi Bob"}', :old, :old),
       ('m-ended-2', 2, 'welcome', 1, 'u2', 's2', 'in_app', 'hello', 'sent',
        '{"title": "Still up"}', :old, :old),
       ('m-recent', 2, 'welcome', 1, 'u2', 's3', 'email', 'hello', 'sent',
        '{"subject": "Hi again"}', :recent, :recent)""",
    """INSERT INTO user_messages (message_id, user_id, channel, content, created_at, expires_at)
       VALUES ('m-ended', 'u2', 'in_app', '{"title": "Hi Bob"}', :old, :old),
              ('m-ended-2', 'u2', 'in_app', '{"title": "Still up"}', :old, :far)""",
    """INSERT INTO receipts (channel, webhook_id, message_id, kind, payload, received_at) VALUES
       ('email', 'wh-old', 'm-running', 'delivered', '{"ip": "10.0.0.1"}', :old),
       ('email', 'wh-recent', 'm-recent', 'delivered', '{}', :recent)""",
    """INSERT INTO arbitration_requests (key, user_id, request, fingerprint, requested_at,
           window_end, state, channel, until, decided_at) VALUES
       ('m-ended', 'u2', '{}', 'f', :old, NULL, 'sent', 'in_app', NULL, :old),
       ('m-running', 'u1', '{}', 'f', :old, NULL, 'sent', 'email', NULL, :old),
       ('api-pending', 'u3', '{}', 'f', :old, NULL, 'pending', NULL, :far, :old),
       ('api-capped', 'u3', '{}', 'f', :capped, NULL, 'sent', 'email', NULL, :capped),
       ('m-recent', 'u2', '{}', 'f', :recent, NULL, 'sent', 'email', NULL, :recent)""",
    """INSERT INTO arbitration_decisions (key, user_id, journey, decided_at, action, channel,
           until, score, reason, checks) VALUES
       ('m-ended', 'u2', 'welcome', :old, 'defer', NULL, :old, 1, 'quiet hours', '[]'),
       ('m-ended', 'u2', 'welcome', :old, 'send', 'in_app', NULL, 1, 'ok', '[]'),
       ('m-running', 'u1', 'welcome', :old, 'send', 'email', NULL, 1, 'ok', '[]'),
       ('api-pending', 'u3', NULL, :old, 'defer', NULL, :far, 1, 'cap', '[]'),
       ('api-capped', 'u3', NULL, :capped, 'send', 'email', NULL, 1, 'ok', '[]'),
       ('m-recent', 'u2', 'welcome', :recent, 'send', 'email', NULL, 1, 'ok', '[]')""",
    """INSERT INTO experiment_archives (journey_key, experiment_key, kind, ended_at, ended_by,
           configuration, results) VALUES ('welcome', 'ended_test', 'experiment', :old,
           'cli:ops', '{}', '{}')""",
    """INSERT INTO assignments (id, journey_key, version, kind, experiment_key, mode, user_id,
           enrollment_id, arm, assigned_at) VALUES
       (1, 'welcome', 1, 'experiment', 'ended_test', 'fixed', 'u2', 2, 'a', :old),
       (2, 'welcome', 1, 'experiment', 'open_test', 'fixed', 'u2', 2, 'a', :old),
       (3, 'welcome', 1, 'experiment', 'ended_test', 'fixed', 'u1', 1, 'b', :old),
       (4, '*', NULL, 'global_control', 'global_control', 'fixed', 'u2', 2, 'control', :old),
       (5, 'welcome', 1, 'experiment', 'ended_test', 'fixed', 'u4', 2, 'a', :recent)""",
]


async def seed(engine: AsyncEngine, *, now: datetime = NOW, journey: str = "welcome") -> None:
    """`old` rows are past every default period, `recent` ones inside all of them."""
    params = {"old": now - timedelta(days=500), "recent": now - timedelta(days=2),
              "far": now + timedelta(days=30),
              # past the decisions period, inside a 365-day cap window
              "capped": now - timedelta(days=300)}  # fmt: skip
    async with engine.begin() as conn:
        for statement in STATEMENTS:
            if journey != "welcome":  # the stack deployed the journey already
                if statement.startswith("INSERT INTO journeys"):
                    continue
                statement = statement.replace("'welcome'", f"'{journey}'")
            await conn.execute(text(statement), params)
