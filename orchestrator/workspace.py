"""A workspace: what a marketing team keeps in git.

    orchestrator.yaml    credentials, channel endpoints and secrets, default timezone
    policy.yaml          the contact policy: caps, quiet hours, consent, rules (optional)
    journeys/*.yaml      one journey per file
    traits.yaml          computed traits (optional)
    segments.yaml        segments over traits (optional)
    tracking_plan.yaml   a JSON Schema per event and for identify traits (optional)
    templates/*.yaml     one message per file, a section per channel

String values in `orchestrator.yaml` may name environment variables as `${NAME}`, so
secrets need not live in git; `${NAME:-default}` uses the default when NAME is unset or empty.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from channels.signing import secret_key
from channels.templates import Template
from channels.unsubscribe import UnsubscribeLinks
from orchestrator.access.credentials import ApiKey, RateLimitConfig, UserTokens, origins
from orchestrator.experiments.assignments import GlobalControl
from orchestrator.ranking.config import RankingConfig
from orchestrator.retention.config import RetentionConfig, needs, shortfalls
from orchestrator.segments.definitions import Definitions, load_definitions
from orchestrator.settings import EXAMPLE_WORKSPACE
from orchestrator.sources import InvalidSource, Problem, Source, load
from orchestrator.tracking_plan.plan import TrackingPlan, load_plan
from rules.durations import Duration
from rules.policy import Policy
from workflows.spec import IDENTIFIER, ChannelName

CONFIG_FILE = "orchestrator.yaml"
POLICY_FILE = "policy.yaml"
# ${NAME} or ${NAME:-default}, as in a shell; the default runs to the first `}`.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_secret(value: str) -> str:
    secret_key(value)
    return value


SigningSecret = Annotated[str, AfterValidator(_check_secret)]


class ChannelEndpoint(_Config):
    """Where a channel system receives messages, and the secrets that sign them (and
    that its receipts must be signed with)."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Required for email and push; in-app and web messages are stored for "
        "their pull APIs and also posted here when given",
    )
    signing_secret: SigningSecret = Field(description="whsec_<base64>; the newest secret signs")
    previous_signing_secret: SigningSecret | None = Field(
        default=None, description="Also sign with this one while receivers rotate"
    )
    timeout: float = Field(default=10.0, gt=0, le=120)
    max_in_flight: int = Field(
        default=16,
        ge=1,
        le=512,
        description="Requests in flight to this provider per worker process: requests per "
        "second are at most this / the provider's response time, and each connection costs "
        "the worker CPU per request (a provider on the same network needs few)",
    )
    rate_limit: RateLimitConfig | None = Field(
        default=None, description="The provider's limit, kept by each worker process"
    )

    def secrets(self) -> list[str]:
        return [s for s in (self.signing_secret, self.previous_signing_secret) if s]


class Links(_Config):
    """Links in messages that come back to this API (one-click unsubscribe)."""

    base_url: str = Field(
        default="http://127.0.0.1:8000", pattern=r"^https?://", description="The public API URL"
    )
    signing_secret: SigningSecret | None = Field(
        default=None, description="Signs unsubscribe links; required when email is configured"
    )

    def unsubscribe_links(self) -> UnsubscribeLinks | None:
        if self.signing_secret is None:
            return None
        return UnsubscribeLinks(base_url=self.base_url, secret=self.signing_secret)


def _default_ingestion_limit() -> RateLimitConfig:
    return RateLimitConfig(per_second=500, burst=1000)


class WriteKey(_Config):
    """One source of events (a website, an app, a backend) and its write key.

    Write keys are public by design (they ship in web pages and apps): they send
    events and nothing else."""

    name: str = Field(pattern=IDENTIFIER)
    write_key: str = Field(min_length=8)
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web pages (scheme://host[:port]) whose browsers may send events",
    )
    server_side: bool = Field(
        default=False,
        description="The key stays on your servers: this source's events may change "
        "consent and suppressions (unsubscribes, bounces, complaints) and report message "
        "receipts; a public key's may not",
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=_default_ingestion_limit,
        description="Requests per second this key may make to each API process; beyond it "
        "the answer is 429 with Retry-After",
    )
    client_rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(per_second=50, burst=200),
        description="A public key's requests per second from one address (a server-side "
        "source has only `rate_limit`)",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return origins(values)


SAMPLE_ITEM = {
    "id": "sample-item",
    "name": "Sample item",
    "url": "https://example.com/items/sample-item",
    "image": "https://example.com/items/sample-item.jpg",
    "price": 19.99,
    "category": "sample",
}


class SampleProfile(_Config):
    """The profile templates are test-rendered against before deploying."""

    user_id: str = "sample-user"
    traits: dict[str, Any] = Field(default_factory=dict)
    event: dict[str, Any] = Field(default_factory=dict, description="Sample event properties")
    recommendations: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(SAMPLE_ITEM)],
        min_length=1,
        description="Catalogue items standing in for ranked content",
    )


class WebhookSigning(_Config):
    signing_secret: SigningSecret


class AlertsConfig(_Config):
    """When to raise an alert, and where to send it besides the event it becomes."""

    url: str | None = Field(
        default=None, pattern=r"^https?://", description="Receives each alert, signed"
    )
    signing_secret: SigningSecret | None = Field(default=None, description="Signs them")
    user_id: str = Field(
        default="alerts",
        min_length=1,
        description="The user whose `Alert Raised` events a journey can react to",
    )
    check_every: Duration = Field(default=timedelta(minutes=15))
    conversion_drop: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="A journey's conversions per entry over the last day fell by this share "
        "of the 14 days before (and a binomial test says it is no accident)",
    )
    delivery_failure_rate: float = Field(
        default=0.2, gt=0, le=1, description="Share of a channel's messages failed in an hour"
    )
    fallback_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of ranked content filled by the popularity baseline in an hour",
    )

    @model_validator(mode="after")
    def _signed(self) -> AlertsConfig:
        if self.url is not None and self.signing_secret is None:
            raise ValueError("alerts.signing_secret is required with alerts.url")
        return self


class SegmentsConfig(_Config):
    """How computed traits and segments keep up with time passing."""

    refresh_every: Duration = Field(
        default=timedelta(seconds=15),
        description="A value that changes with time (a window, days since) because of an "
        "event that arrived while the upkeep slept is computed again at most this long "
        "after it changed (one it knew of when it went to sleep, on time)",
    )


class KafkaConsume(_Config):
    """Events in: Segment-shaped JSON records (as `/v1/batch` takes), keyed by user."""

    topics: list[str] = Field(min_length=1)
    group_id: str = Field(default="orchestrator", min_length=1)
    source: str = Field(
        pattern=IDENTIFIER, description="The workspace source the records count as (server-side)"
    )
    dead_letter_topic: str = Field(
        min_length=1, description="Where a record that fails validation goes, with the reason"
    )
    max_batch: int = Field(default=500, ge=1, le=10_000, description="Records per transaction")
    session_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="A consumer silent this long is dead: its partitions go to the others",
    )


class KafkaPublish(_Config):
    """Facts out: every message, decision, journey step and assignment, as versioned JSON
    (`orchestrator events schema`), keyed by user, through a transactional outbox."""

    topic: str = Field(min_length=1)


class FactsWebhook(_Config):
    """Facts out without Kafka: the same records, POSTed in signed batches (Standard
    Webhooks, like the channels) to one endpoint, in order; a batch is retried until
    it is answered 2xx."""

    url: str = Field(pattern=r"^https?://")
    signing_secret: SigningSecret
    batch: int = Field(default=100, ge=1, le=1000, description="Records per request")
    timeout: float = Field(default=10.0, gt=0, le=120)


class KafkaConfig(_Config):
    """A Kafka cluster; `orchestrator dev` starts a local one (tansu) when this is set."""

    bootstrap_servers: str = Field(min_length=1, examples=["127.0.0.1:9092"])
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = Field(default=None, description="CA bundle for SSL")
    consume: KafkaConsume | None = None
    publish: KafkaPublish | None = None

    def client_options(self) -> dict[str, Any]:
        """What every aiokafka client of this cluster is given."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options |= {"sasl_mechanism": self.sasl_mechanism,
                        "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password}  # fmt: skip
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            options["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return options


class WorkspaceConfig(_Config):
    """`orchestrator.yaml`."""

    workspace: str = Field(pattern=IDENTIFIER)
    default_timezone: str = "UTC"
    sources: list[WriteKey] = Field(min_length=1)
    api_keys: list[ApiKey] = Field(
        default_factory=list, description="Server API keys (Authorization: Bearer) with scopes"
    )
    user_tokens: UserTokens | None = Field(
        default=None, description="Signs the tokens apps use for one user's inbox and placements"
    )
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    global_control: float = Field(
        default=0,
        ge=0,
        le=50,
        description="Percent of all users kept out of every promotional message of every "
        "journey, to measure what the journeys together add (transactional and service "
        "messages still go)",
    )
    channels: dict[ChannelName, ChannelEndpoint] = Field(default_factory=dict)
    webhooks: WebhookSigning | None = Field(
        default=None, description="Signs requests from journey `webhook` steps"
    )
    links: Links = Field(default_factory=Links)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    sample_profile: SampleProfile = Field(default_factory=SampleProfile)
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig)
    kafka: KafkaConfig | None = Field(
        default=None, description="Events in from Kafka topics, facts out to one"
    )
    facts_webhook: FactsWebhook | None = Field(
        default=None, description="Facts out in signed batches, for a workspace without Kafka"
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="How long each kind of data about users is kept",
    )

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @field_validator("sources")
    @classmethod
    def _unique_keys(cls, sources: list[WriteKey]) -> list[WriteKey]:
        keys = [s.write_key for s in sources]
        if len(set(keys)) != len(keys):
            raise ValueError("two sources share a write key")
        return sources

    @field_validator("api_keys")
    @classmethod
    def _distinct_api_keys(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("two API keys share a name")
        secrets = [s for k in keys for s in (k.secret, k.previous_secret) if s]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two API keys share a secret")
        return keys

    @model_validator(mode="after")
    def _channel_needs(self) -> WorkspaceConfig:
        for name in ("email", "push"):
            endpoint = self.channels.get(name)  # type: ignore[call-overload]
            if endpoint is not None and endpoint.url is None:
                raise ValueError(f"channels.{name}.url is required: {name} is delivered by POST")
        if "email" in self.channels and self.links.signing_secret is None:
            raise ValueError(
                "links.signing_secret is required with email: it signs unsubscribe links"
            )
        return self

    @model_validator(mode="after")
    def _kinds_apart(self) -> WorkspaceConfig:
        # A credential of one kind must never pass for another.
        public = {s.write_key for s in self.sources}
        for key in self.api_keys:
            if public & {key.secret, key.previous_secret}:
                raise ValueError(f"API key {key.name!r} reuses a source's public write key")
        return self

    @model_validator(mode="after")
    def _kafka_source(self) -> WorkspaceConfig:
        consume = self.kafka.consume if self.kafka else None
        if consume is not None:
            source = next((s for s in self.sources if s.name == consume.source), None)
            if source is None:
                raise ValueError(f"kafka.consume.source: no source named {consume.source!r}")
            if not source.server_side:
                raise ValueError(
                    f"kafka.consume.source: {consume.source!r} must be server-side "
                    "(records on a topic come from the company's own systems)"
                )
        return self

    def control_group(self) -> GlobalControl:
        return GlobalControl(self.workspace, self.global_control)

    def source_for(self, write_key: str) -> WriteKey | None:
        return next((s for s in self.sources if s.write_key == write_key), None)


@dataclass
class Workspace:
    """A loaded workspace. Journeys are loaded as sources; validation parses them."""

    root: Path
    config: WorkspaceConfig
    policy: Policy = field(default_factory=Policy)
    journey_files: list[Path] = field(default_factory=list)
    templates: dict[str, Template] = field(default_factory=dict)
    template_sources: dict[str, Source] = field(default_factory=dict)
    definitions: Definitions = field(default_factory=Definitions)
    tracking_plan: TrackingPlan | None = None

    def display(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def find_root(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding an orchestrator.yaml."""
    here = start.resolve()
    for candidate in (here, *here.parents) if here.is_dir() else here.parents:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def load_config(root: Path) -> WorkspaceConfig:
    """Load and validate `orchestrator.yaml`, resolving `${ENV}` references."""
    return _load_config(root)[0]


def _load_config(root: Path) -> tuple[WorkspaceConfig, Source]:
    source = load(root / CONFIG_FILE, display=CONFIG_FILE)
    problems: list[Problem] = []
    data = _resolve_env(source, source.data, [], problems)
    if problems:
        raise InvalidSource(problems)
    try:
        return WorkspaceConfig.model_validate(data), source
    except ValidationError as exc:
        raise InvalidSource(source.problems_from(exc)) from None


def load_policy(root: Path) -> Policy:
    """The workspace's contact policy (`policy.yaml`); without one, nothing is restricted."""
    path = root / POLICY_FILE
    if not path.exists():
        return Policy()
    source = load(path, display=POLICY_FILE)
    if source.data is None:
        return Policy()
    try:
        return Policy.model_validate(source.data)
    except ValidationError as exc:
        raise InvalidSource(source.problems_from(exc)) from None


def load_workspace(root: Path) -> Workspace:
    """Load the config, the policy and every template; raise InvalidSource listing all problems."""
    problems: list[Problem] = []
    config = config_source = None
    policy = Policy()
    try:
        config, config_source = _load_config(root)
    except InvalidSource as exc:
        problems.extend(exc.problems)
    try:
        policy = load_policy(root)
    except InvalidSource as exc:
        problems.extend(exc.problems)
    templates: dict[str, Template] = {}
    template_sources: dict[str, Source] = {}
    for path in sorted((root / "templates").glob("*.yaml")):
        display = f"templates/{path.name}"
        try:
            source = load(path, display=display)
            templates[path.stem] = Template.model_validate(source.data)
            template_sources[path.stem] = source
        except InvalidSource as exc:
            problems.extend(exc.problems)
        except ValidationError as exc:
            problems.extend(source.problems_from(exc))
    definitions = Definitions()
    try:
        definitions = load_definitions(root)
    except InvalidSource as exc:
        problems.extend(exc.problems)
    tracking_plan = None
    try:
        tracking_plan = load_plan(root)
    except InvalidSource as exc:
        problems.extend(exc.problems)
    if config is not None and config_source is not None:
        problems.extend(_retention_problems(config, config_source, policy, definitions))
    if problems or config is None:
        raise InvalidSource(problems)
    journeys = sorted((root / "journeys").glob("*.yaml"))
    return Workspace(root, config, policy, journeys, templates, template_sources, definitions,
                     tracking_plan)  # fmt: skip


def _retention_problems(
    config: WorkspaceConfig, source: Source, policy: Policy, definitions: Definitions
) -> list[Problem]:
    """A retention period shorter than what a feature reads back (the policy's caps,
    a trait's window, the ranking baseline's window) is refused, at the period."""
    found = shortfalls(
        config.retention,
        needs(policy=policy, definitions=definitions,
              popularity_window=config.ranking.popularity_window),
    )  # fmt: skip
    return [source.problem(["retention", kind], message) for kind, message in found.items()]


def _resolve_env(source: Source, value: Any, loc: list[str | int], problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(source, v, [*loc, k], problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(source, v, [*loc, i], problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if default is not None:
            return os.environ.get(name) or default
        if name not in os.environ:
            problems.append(source.problem(loc, f"environment variable {name} is not set"))
            return ""
        return os.environ[name]

    return _ENV_REF.sub(substitute, value)


def secrets_of(config: WorkspaceConfig) -> dict[str, str]:
    """Every secret in the config, by where it is (write keys are public: not secrets)."""
    found: dict[str, str] = {}
    for key in config.api_keys:
        found[f"api_keys.{key.name}.secret"] = key.secret
        if key.previous_secret:
            found[f"api_keys.{key.name}.previous_secret"] = key.previous_secret
    if config.user_tokens is not None:
        for i, secret in enumerate(config.user_tokens.secrets()):
            found["user_tokens.secret" if i == 0 else "user_tokens.previous_secret"] = secret
    for name, endpoint in config.channels.items():
        for i, secret in enumerate(endpoint.secrets()):
            found[f"channels.{name}.{'previous_' if i else ''}signing_secret"] = secret
    if config.webhooks is not None:
        found["webhooks.signing_secret"] = config.webhooks.signing_secret
    if config.links.signing_secret is not None:
        found["links.signing_secret"] = config.links.signing_secret
    return found


def published_secrets(config: WorkspaceConfig) -> list[str]:
    """Where `config` uses a secret of the example workspace, which this repository
    publishes (a copied example must not go to production as it is)."""
    example = set(secrets_of(load_config(EXAMPLE_WORKSPACE)).values())
    return sorted(where for where, secret in secrets_of(config).items() if secret in example)
