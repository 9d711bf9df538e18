"""The process's tracer provider: OpenTelemetry's SDK exporting spans to an OTLP/HTTP
collector, when the settings or the standard OTEL_* variables name one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from orchestrator.settings import Settings

# The SDK's own variables for where spans go; either one turns tracing on as well.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_enabled(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """On with ORCHESTRATOR_OTLP_ENDPOINT or an OTEL_EXPORTER_OTLP_*ENDPOINT, unless
    OTEL_SDK_DISABLED=true (the SDK's switch for turning it all off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return settings.otlp_endpoint is not None or any(environ.get(v) for v in ENDPOINT_VARIABLES)


def build_provider(settings: Settings, *, service: str) -> TracerProvider:
    """A provider batching spans to the collector. The SDK reads the rest of its standard
    variables itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (else the service
    is `service`), OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
    _COMPRESSION and _CERTIFICATE."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    endpoint = settings.otlp_endpoint
    # ORCHESTRATOR_OTLP_ENDPOINT is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is.
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@contextmanager
def exporting(settings: Settings, *, service: str) -> Iterator[TracerProvider | None]:
    """While the block runs, this process's spans go to the collector (None: tracing is
    off); on exit the spans still queued are sent. Enter it once per process, after any
    fork: the provider is global, as OpenTelemetry's instrumentations expect."""
    if not tracing_enabled(settings):
        yield None
        return
    provider = build_provider(settings, service=service)
    trace.set_tracer_provider(provider)
    try:
        yield provider
    finally:
        provider.shutdown()
