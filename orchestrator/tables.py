"""The Postgres schema, as SQLAlchemy Core tables. Migrations create it; code queries it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

_now = text("now()")
_empty = text("'{}'::jsonb")

journeys = Table(
    "journeys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("current_version", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
)

journey_versions = Table(
    "journey_versions",
    metadata,
    Column("journey_key", Text, ForeignKey("journeys.key"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("templates", JSONB, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_text", Text, nullable=False),
    Column("deployed_at", DateTime(timezone=True), nullable=False, server_default=_now),
    # A version that moves earlier versions' users (`migrate`): the last enrollment told
    # to move, and when every one has been.
    Column("migration_cursor", BigInteger, nullable=False, server_default="0"),
    Column("migrated_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("journey_key", "version"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("traits", JSONB, nullable=False, server_default=_empty),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    # When each trait last changed (ISO times): when two profiles merge, the newest wins.
    Column("trait_times", JSONB, nullable=False, server_default=_empty),
)

# Profile ids merged into another user (`orchestrator.users.identity`): an anonymous
# visitor's (`anonymous:<anonymousId>`) once identified, or a known user aliased to
# another. Events naming one of these count for `user_id`.
identities = Table(
    "identities",
    metadata,
    Column("anonymous_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("message_id", Text, nullable=False, unique=True),
    Column("source", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("event", Text),
    Column("user_id", Text),
    Column("anonymous_id", Text),
    Column("properties", JSONB, nullable=False, server_default=_empty),
    Column("traits", JSONB, nullable=False, server_default=_empty),
    Column("context", JSONB, nullable=False, server_default=_empty),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # NULL until every journey that cares has been told; the sweeper retries these.
    Column("routed_at", DateTime(timezone=True)),
    Index("events_user_idx", "user_id", "received_at"),
    Index("events_unrouted_idx", "received_at", postgresql_where=text("routed_at IS NULL")),
    Index("events_received_idx", "received_at", "id"),  # retention: the oldest first
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("journey_key", Text, ForeignKey("journeys.key"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("user_id", Text, nullable=False),
    # active | holdout | completed | exited | converted
    Column("status", Text, nullable=False),
    Column("trigger_message_id", Text, nullable=False),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("end_reason", Text),
    Column("current_step", Text),
    Column("converted_at", DateTime(timezone=True)),
    # The goal event's `revenue` (or `value`), when it carried one, and the event (one
    # event converts every enrollment waiting for it: revenue counts it once).
    Column("conversion_value", Float),
    Column("conversion_event_id", BigInteger),
    # A keyed journey's instance key ('' for the journey's one instance per user).
    Column("instance", Text, nullable=False, server_default=""),
    # The workflow, when it is not the user's own (it entered under an id merged since).
    Column("workflow_id", Text),
    UniqueConstraint("journey_key", "trigger_message_id", name="enrollments_trigger_key"),
    Index("enrollments_user_idx", "journey_key", "user_id", "entered_at"),
    Index("enrollments_user_id_idx", "user_id"),
    # Reports and alerts: a user's conversions, the last day's entries and conversions.
    Index(
        "enrollments_converted_user_idx",
        "user_id",
        "id",
        postgresql_where=text("converted_at IS NOT NULL"),
    ),
    Index(
        "enrollments_converted_at_idx",
        "converted_at",
        postgresql_where=text("converted_at IS NOT NULL"),
    ),
    Index("enrollments_entered_at_idx", "entered_at"),
    # At most one user-journey (instance) in flight: two racing triggers cannot both enter.
    Index(
        "enrollments_one_active",
        "journey_key",
        "user_id",
        "instance",
        unique=True,
        postgresql_where=text("status = 'active'"),
    ),
    # Retention keeps a running journey's trigger event: is this event one?
    Index(
        "enrollments_active_trigger_idx",
        "trigger_message_id",
        postgresql_where=text("status = 'active'"),
    ),
)

enrollment_steps = Table(
    "enrollment_steps",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("enrollment_id", BigInteger, ForeignKey("enrollments.id"), nullable=False),
    Column("step", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("visit", Integer, nullable=False),
    Column("outcome", Text),
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("enrollment_id", "step", "visit", name="enrollment_steps_visit_key"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Text, primary_key=True),
    Column("enrollment_id", BigInteger, ForeignKey("enrollments.id")),
    Column("journey_key", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("category", Text),
    # sending | sent (the provider accepted it) | delivered | bounced | failed
    Column("status", Text, nullable=False),
    Column("content", JSONB, nullable=False, server_default=_empty),
    # Which source filled the ranked content (model or baseline) and why.
    Column("content_source", JSONB),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("status_code", Integer),
    Column("error", Text),
    Column("value", Float),
    Column("provider_message_id", Text),
    Column("bounce_type", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("sent_at", DateTime(timezone=True)),
    # Receipts: the first time each happened.
    Column("delivered_at", DateTime(timezone=True)),
    Column("opened_at", DateTime(timezone=True)),
    Column("clicked_at", DateTime(timezone=True)),
    Column("bounced_at", DateTime(timezone=True)),
    Column("complained_at", DateTime(timezone=True)),
    Column("unsubscribed_at", DateTime(timezone=True)),
    Index("messages_user_idx", "user_id", "created_at"),
    Index("messages_created_at_idx", "created_at"),  # alerts: the last hour's messages
    # Retention: bodies not yet blanked, the oldest first.
    Index(
        "messages_body_idx",
        "created_at",
        "id",
        postgresql_where=text("content <> '{}'::jsonb"),
    ),
)

# Receipts as the channel systems sent them; the key refuses a replayed webhook-id.
receipts = Table(
    "receipts",
    metadata,
    Column("channel", Text, nullable=False),
    Column("webhook_id", Text, nullable=False),
    Column("message_id", Text, ForeignKey("messages.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("channel", "webhook_id"),
    Index("receipts_message_idx", "message_id"),
    Index("receipts_received_idx", "received_at", "channel", "webhook_id"),  # retention
)

# In-app inbox messages and web placement content, served to apps and websites.
user_messages = Table(
    "user_messages",
    metadata,
    Column("message_id", Text, ForeignKey("messages.id"), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("placement", Text),
    Column("content", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False, server_default=_empty),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True)),
    Column("dismissed_at", DateTime(timezone=True)),
    Index("user_messages_inbox_idx", "user_id", "channel", "placement", "created_at"),
    Index("user_messages_created_idx", "created_at", "message_id"),  # retention
)

# What templates can recommend: loaded by `orchestrator catalog load`.
catalog_items = Table(
    "catalog_items",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("url", Text),
    Column("image", Text),
    Column("price", Float),
    Column("category", Text),
    Column("description", Text),
    Column("attributes", JSONB, nullable=False, server_default=_empty),
    Column("available", Boolean, nullable=False, server_default=text("true")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
)

# Who did what: catalogue writes, deploys, personal-data reads by key or user token.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # server_key | user_token | write_key | cli | system
    Column("actor_kind", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject", Text),
    Column("details", JSONB, nullable=False, server_default=_empty),
    Column("client", Text),
    Index("audit_log_at_idx", "at"),
    Index("audit_log_subject_idx", "subject", "at"),
)

# Trained ranking models: every version is kept; at most one is active.
ranking_models = Table(
    "ranking_models",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("source", Text, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("purchases", Integer, nullable=False),
    Column("items", Integer, nullable=False),
    # active | canary | inactive | rejected (did not beat the active model or popularity)
    Column("status", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("metrics", JSONB, nullable=False),
    Column("artifact", LargeBinary, nullable=False),
    # The model card beyond these columns: features, parameters, offline metrics
    # overall and by group, the gate (activations are in the audit log).
    Column("card", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # A canary: served to this share (0..1) of the users, within the segment when set.
    Column("canary_share", Float, nullable=True),
    Column("canary_segment", Text, nullable=True),
    Column("canary_since", DateTime(timezone=True), nullable=True),
    # An active version whose online results fell under the floor: the baseline answers.
    Column("degraded_at", DateTime(timezone=True), nullable=True),
    Column("degraded_reason", Text, nullable=True),
    # What it was trained on, binned, for input drift (orchestrator.ranking.drift); NULL
    # for versions trained before drift was measured.
    Column("profile", JSONB),
    Index(
        "ranking_models_one_active",
        "status",
        unique=True,
        postgresql_where=text("status = 'active'"),
    ),
    Index(
        "ranking_models_one_canary",
        "status",
        unique=True,
        postgresql_where=text("status = 'canary'"),
    ),
)

# Every randomised choice, once per user and never changed: a holdout, an experiment
# step's variant, a send's template variant, the global control group. `propensity` is
# the probability the arm had of being chosen at that moment (a fixed split's weight,
# the holdout's share, the bandit's chance of drawing it); NULL for choices made before
# it was logged. Bandits keep their users' picks here and count conversions per arm.
assignments = Table(
    "assignments",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("journey_key", Text, nullable=False),  # "*" for the global control group
    Column("version", Integer),
    # holdout | experiment | template | global_control
    Column("kind", Text, nullable=False),
    Column("experiment_key", Text, nullable=False),
    Column("mode", Text, nullable=False),  # fixed | bandit
    Column("user_id", Text, nullable=False),
    Column("enrollment_id", BigInteger, ForeignKey("enrollments.id")),
    Column("arm", Text, nullable=False),
    Column("propensity", Float),
    Column("assigned_at", DateTime(timezone=True), nullable=False, server_default=_now),
    UniqueConstraint(
        "journey_key", "kind", "experiment_key", "user_id", name="assignments_first_key"
    ),
    Index("assignments_arm_idx", "journey_key", "kind", "experiment_key", "arm"),
    Index("assignments_user_idx", "user_id"),
    Index("assignments_assigned_idx", "assigned_at", "id"),  # retention
)

# This database's random id, made by the migration: message ids are derived in its
# namespace, so that they never repeat across installs, whose enrollment ids all start
# at 1. One row, ever (the primary key only takes `true`).
installation = Table(
    "installation",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("id", Uuid, nullable=False, server_default=text("gen_random_uuid()")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    CheckConstraint("singleton", name="installation_one_row"),
)

# Alerts: one open row per kind and subject until its condition clears.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    # sample_ratio | conversion_drop | delivery_failures | ranking_fallback
    Column("kind", Text, nullable=False),
    Column("subject", Text, nullable=False),  # journey, journey/experiment, channel, "ranking"
    Column("details", JSONB, nullable=False, server_default=_empty),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Index(
        "alerts_one_open",
        "kind",
        "subject",
        unique=True,
        postgresql_where=text("resolved_at IS NULL"),
    ),
)

# Ended experiments: their configuration and final results, kept unchanged for audits.
experiment_archives = Table(
    "experiment_archives",
    metadata,
    Column("journey_key", Text, nullable=False),
    Column("experiment_key", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("ended_by", Text, nullable=False),
    Column("configuration", JSONB, nullable=False),
    Column("results", JSONB, nullable=False),
    PrimaryKeyConstraint("journey_key", "experiment_key"),
)

# ---- computed traits and segments (orchestrator.segments) ------------------------

# Each deploy of traits.yaml and segments.yaml that changed them; the newest is in force.
# A backfill brings every user to it (`backfill_cursor`: the last user done).
segment_definitions = Table(
    "segment_definitions",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("definitions", JSONB, nullable=False),
    Column("sources", JSONB, nullable=False, server_default=_empty),
    Column("content_hash", Text, nullable=False),
    Column("deployed_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("backfill_cursor", Text),
    Column("backfilled_at", DateTime(timezone=True)),
)

# Per user: each computed trait's state and value, the segments they are in, and when
# a value next changes with no event (the refresher's work list).
computed_profiles = Table(
    "computed_profiles",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("version", Integer, nullable=False, server_default=text("0")),
    Column("state", JSONB, nullable=False, server_default=_empty),
    Column("values", JSONB, nullable=False, server_default=_empty),
    Column("changed_at", JSONB, nullable=False, server_default=_empty),
    Column("segments", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("computed_at", DateTime(timezone=True)),
    Column("next_at", DateTime(timezone=True)),
    Index("computed_profiles_due_idx", "next_at", postgresql_where=text("next_at IS NOT NULL")),
)

# Membership over time: a row per stay in a segment; `exited_at` NULL while inside.
segment_memberships = Table(
    "segment_memberships",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("segment_key", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("exited_at", DateTime(timezone=True)),
    Index(
        "segment_memberships_current_key",
        "segment_key",
        "user_id",
        unique=True,
        postgresql_where=text("exited_at IS NULL"),
    ),
    # Members at a time, in user order (audience runs page through them).
    Index("segment_memberships_user_idx", "segment_key", "user_id"),
    Index("segment_memberships_entered_idx", "segment_key", "entered_at"),
    Index("segment_memberships_exited_idx", "segment_key", "exited_at"),
    Index("segment_memberships_user_id_idx", "user_id"),
)

# One run of an audience journey: every member of its segment at `scheduled_for`.
audience_runs = Table(
    "audience_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("journey_key", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("segment_key", Text, nullable=False),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("finished_at", DateTime(timezone=True)),
    Column("members", Integer),
    Column("entered", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("journey_key", "scheduled_for", name="audience_runs_once"),
)

# The transactional outbox (migration 0014): triggers on the tables above write every
# fact here in the fact's own transaction, once a relay has switched it on
# (`outbox_state.enabled`); the relay publishes in id order and marks what it sent.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("fact", Text, nullable=False, unique=True),  # the record's stable id
    Column("kind", Text, nullable=False),
    Column("user_id", Text),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("published_at", DateTime(timezone=True)),
    Index("outbox_unpublished_idx", "id", postgresql_where=text("published_at IS NULL")),
)

outbox_state = Table(
    "outbox_state",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("enabled", Boolean, nullable=False, server_default=text("false")),
    CheckConstraint("singleton", name="outbox_state_one_row"),
)

# Merges whose running journeys must learn their user's new id (`workflows`: the
# workflow ids, each with whether it now duplicates one of the user's own journeys).
identity_merges = Table(
    "identity_merges",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    Column("workflows", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("told_at", DateTime(timezone=True)),
    Index("identity_merges_untold_idx", "merged_at", postgresql_where=text("told_at IS NULL")),
)

# ---- the tracking plan (orchestrator.tracking_plan) ------------------------------

# Each deploy that changed tracking_plan.yaml; the newest is in force. `plan` NULL: the
# file was removed, and nothing is checked from then on.
tracking_plans = Table(
    "tracking_plans",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("plan", JSONB),
    Column("source", Text, nullable=False, server_default=text("''")),
    Column("content_hash", Text, nullable=False),
    Column("deployed_at", DateTime(timezone=True), nullable=False, server_default=_now),
)

# Violations accepted under `mode: report` (or unplanned events under `report`): one
# counter per plan version, UTC day, event, field and problem; a batch adds to each once.
tracking_plan_violations = Table(
    "tracking_plan_violations",
    metadata,
    Column("plan_version", Integer, nullable=False),
    Column("day", Date, nullable=False),
    Column("type", Text, nullable=False),  # track | identify
    Column("event", Text, nullable=False),  # "" for identify
    Column("field", Text, nullable=False),
    Column("problem", Text, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("example_message_id", Text, nullable=False),
    Column("example_detail", Text, nullable=False),
    PrimaryKeyConstraint("plan_version", "day", "type", "event", "field", "problem"),
    Index("tracking_plan_violations_day_idx", "day"),
)

# One row per retention run (orchestrator.retention): when, the cutoffs it used, and per
# step what it removed and kept. `progress` is where each step is, written in the same
# transaction as each batch, so a run that crashed resumes exactly where it stopped.
retention_runs = Table(
    "retention_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("workflow_id", Text, nullable=False, unique=True),
    Column("trigger", Text, nullable=False),  # schedule | cli
    Column("dry_run", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", Text, nullable=False),  # running | finished
    Column("cutoffs", JSONB, nullable=False),
    Column("counts", JSONB, nullable=False, server_default=_empty),
    Column("progress", JSONB, nullable=False, server_default=_empty),
    Index("retention_runs_started_idx", "started_at"),
)

# ---- erasure (orchestrator.users, migration 0018) --------------------------------

# This installation's random HMAC key: erased ids are kept only as HMAC-SHA256 under it,
# so a hash seen elsewhere (a workflow id, an audit entry) cannot be tested against
# guessed ids without the database. One row, ever.
erasure_key = Table(
    "erasure_key",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now),
    CheckConstraint("singleton", name="erasure_key_one_row"),
)

# One row per erased user, by the keyed hash of the id the erasure was asked for.
# `user_id` and `ids` (every id it covers) are kept only while it runs.
erasures = Table(
    "erasures",
    metadata,
    Column("hash", Text, primary_key=True),
    # requested | erasing | erased | restored
    Column("status", Text, nullable=False),
    Column("user_id", Text),
    Column("ids", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("restored_at", DateTime(timezone=True)),
    Column("counts", JSONB, nullable=False, server_default=_empty),
)

# The suppression list: ingestion drops events naming any of these ids.
erased_ids = Table(
    "erased_ids",
    metadata,
    Column("hash", Text, primary_key=True),
    Column("erasure", Text, ForeignKey("erasures.hash"), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Index("erased_ids_erasure_idx", "erasure"),
)
