"""The API in the trace: FastAPI's own OpenTelemetry support, told explicitly whether to
trace, since it traces by itself as soon as a process has a tracer provider."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi.telemetry import TelemetryConfig

# Probes that would only fill traces with noise.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def api_telemetry(*, tracing: bool) -> TelemetryConfig:
    """`FastAPI(telemetry=...)`: with `tracing`, a server span per request (continuing
    the caller's `traceparent`), named after its route, with spans for its dependencies
    (authentication, limits), endpoint and serialisation under it; without, none."""
    return {"tracing": tracing, "operation_spans": tracing, "exclude": _probe}


def _probe(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED
