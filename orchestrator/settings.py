"""Process settings from the environment (`ORCHESTRATOR_*`), one object per process."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE_WORKSPACE = Path(__file__).resolve().parent.parent / "examples" / "retail"


class Settings(BaseSettings):
    """How `orchestrator api` and `orchestrator worker` find Postgres, Temporal, the workspace."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", frozen=True)

    environment: Literal["development", "production"] = "development"
    database_url: str | None = Field(
        default=None, description="postgresql://user:pass@host/db (asyncpg is used)"
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "journeys"
    workspace: Path = EXAMPLE_WORKSPACE
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_processes: int = Field(default=1, ge=1, le=64, description="API processes sharing the port")
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For names the client (comma-separated, `*`: any)",
    )
    # Ingestion limits, as Segment's: 32 KB per event, 500 KB per request.
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    # Events no journey was told about after this long are routed again by the sweeper.
    reroute_after_seconds: float = 30.0
    # A request waits this long for its events to reach their journeys; after that the
    # answer goes out and routing goes on behind it (it is stored either way).
    route_within_seconds: float = Field(default=0.05, ge=0)
    db_pool_size: int = 10
    # Traces go to this OTLP/HTTP collector (its base URL, e.g. http://127.0.0.1:4318);
    # unset, with no OTEL_EXPORTER_OTLP_*ENDPOINT either, tracing is off.
    otlp_endpoint: str | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"an http(s) URL such as http://127.0.0.1:4318, not {value!r}")
        if value is not None and not urlsplit(value).hostname:
            raise ValueError(f"an http(s) URL with a host, not {value!r}")
        return value

    # Prometheus metrics of `worker`, `consume` and `relay` (the API serves /metrics on
    # its own port): unset, the worker's are on 9464 and the others' off; 0 is off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # The Temporal SDK's own metrics, served by `worker` (0: off).
    temporal_metrics_port: int = Field(default=9465, ge=0, le=65535)

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        if self.environment == "production":
            if not self.database_url:
                raise ValueError("ORCHESTRATOR_DATABASE_URL is required in production")
            if self.workspace.resolve() == EXAMPLE_WORKSPACE:
                raise ValueError(
                    "ORCHESTRATOR_WORKSPACE must point at your workspace in production, "
                    "not the example (its secrets are public)"
                )
        return self

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ValueError(
                "set ORCHESTRATOR_DATABASE_URL (or use `orchestrator dev`, which starts Postgres)"
            )
        return self.database_url
