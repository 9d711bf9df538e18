"""Outgoing webhooks in the sender's trace: a client span per request, and its context
in a W3C `traceparent` header, so the receiving system can join the trace."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

_tracer = trace.get_tracer("channels.delivery")  # a proxy: it follows the provider set later


@contextmanager
def webhook_span(
    method: str, url: httpx.URL, *, msg_id: str, headers: MutableMapping[str, str]
) -> Iterator[Span | None]:
    """Inside a trace (a traced send activity), a client span for the request, whose
    `traceparent` (and `tracestate`, `baggage`) is added to `headers`; outside one,
    nothing at all: no span and no header.

    Only the URL's scheme, host, port and path are recorded: a query may carry a token.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.full": str(url.copy_with(query=None, fragment=None, username=None, password=None)),
        "server.address": url.host,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
        "webhook.id": msg_id,
    }
    with _tracer.start_as_current_span(method, kind=SpanKind.CLIENT, attributes=attributes) as span:
        propagate.inject(headers)
        yield span


def record_status(span: Span | None, status: int) -> None:
    """The answer's status on the span; 4xx and 5xx mark it failed (OpenTelemetry's rule
    for client spans)."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"answered {status}"))
