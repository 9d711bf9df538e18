"""Metrics for the processes that are not the API (worker, consume, relay), as the
commands start them: ORCHESTRATOR_METRICS_PORT, and for the worker the Temporal SDK's
metrics on ORCHESTRATOR_TEMPORAL_METRICS_PORT."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from temporalio.runtime import Runtime

from orchestrator.metrics.exposition import MetricsUnavailable, serving_metrics
from orchestrator.metrics.sdk import SdkMetricsUnavailable, runtime_with_metrics
from orchestrator.settings import Settings

# Where `orchestrator worker` serves its metrics unless ORCHESTRATOR_METRICS_PORT says.
WORKER_PORT = 9464


@dataclass(frozen=True)
class Exported:
    url: str | None  # this process's metrics
    sdk_url: str | None = None  # the Temporal SDK's
    runtime: Runtime | None = None  # for the Temporal client, when it serves the SDK's

    def describe(self) -> str:
        """Where the metrics are, for the line a command prints when it starts."""
        parts = [f"metrics at {self.url}" if self.url else "metrics off"]
        if self.sdk_url:
            parts.append(f"Temporal SDK metrics at {self.sdk_url}")
        return "; ".join(parts)


@contextmanager
def exported(settings: Settings, *, default_port: int = 0, sdk: bool = False
             ) -> Iterator[Exported]:  # fmt: skip
    """Serve the metrics (on ORCHESTRATOR_METRICS_PORT, else `default_port`) until the
    block exits; a port that cannot be served is one line on stderr and exit 1, before
    anything else starts."""
    host = settings.metrics_host
    port = settings.metrics_port if settings.metrics_port is not None else default_port
    try:
        runtime = runtime_with_metrics(host, settings.temporal_metrics_port) if sdk else None
        with serving_metrics(host, port) as url:
            sdk_url = f"http://{host}:{settings.temporal_metrics_port}/metrics" if runtime else None
            yield Exported(url, sdk_url, runtime)
    except (MetricsUnavailable, SdkMetricsUnavailable) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
