"""Temporal in the trace: the SDK's OpenTelemetry interceptor on the client, and so on
every worker built from it (workflow and activity spans, context in message headers)."""

from __future__ import annotations

from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor


def client_interceptors(*, tracing: bool) -> list[Interceptor]:
    """What `Client.connect(interceptors=...)` takes: the tracing interceptor, when on.

    Registered on the client only: a worker takes the client's worker interceptors, and
    registering it on both would trace every workflow task twice."""
    return [TracingInterceptor()] if tracing else []


def traced(client: Client) -> Client:
    """The same connection, with the tracing interceptor added (for a client made
    elsewhere, such as a test server's)."""
    config = client.config()
    config["interceptors"] = [*config["interceptors"], TracingInterceptor()]
    return Client(**config)
