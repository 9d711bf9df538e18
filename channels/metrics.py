"""Prometheus metrics of the channels: messages, provider calls, retries, rate-limit
waits and ranking answers.

Every label value comes from a bounded set (channel names, outcome words, ranking
sources and fallback codes): never a user id, a message id or a URL. Each metric has
at least one label, so no value exists before the first sample (forked API processes
switch to prometheus-client's multiprocess mode before any; see
`orchestrator.metrics.exposition`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

import httpx
from prometheus_client import Counter, Histogram

MESSAGES = Counter(
    "orchestrator_messages",
    "Messages by channel and final status: sent (the provider or the inbox took it) or "
    "failed (given up: a permanent error, a template that does not render)",
    ["channel", "status"],
)
DELIVERY_RETRIES = Counter(
    "orchestrator_delivery_retries",
    "Delivery attempts that failed and that Temporal retries (timeouts, 5xx, 429)",
    ["channel"],
)
PROVIDER_REQUESTS = Counter(
    "orchestrator_provider_requests",
    "HTTP requests to channel providers, by outcome: success (2xx, 3xx), client_error "
    "(4xx but 429), rate_limited (429), server_error (5xx), timeout, unreachable",
    ["channel", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "orchestrator_provider_request_duration_seconds",
    "Time to a channel provider's answer (its status and headers), whatever the outcome",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAITS = Counter(
    "orchestrator_rate_limit_waits",
    "Deliveries that waited for the channel's rate limit (`rate_limit` in orchestrator.yaml)",
    ["channel"],
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "orchestrator_rate_limit_wait_seconds",
    "Time deliveries spent waiting for the channel's rate limit",
    ["channel"],
)
RANKING_ANSWERS = Counter(
    "orchestrator_ranking_answers",
    "Ranked-content answers by source (model, baseline) and, for the baseline, why it "
    "filled them (opted_out, no_model, timeout, error, degraded, low_confidence; none)",
    ["source", "fallback"],
)


def count_message(channel: str, status: str) -> None:
    """A message reached its final status (`sent` or `failed`)."""
    MESSAGES.labels(channel, status).inc()


def count_retry(channel: str) -> None:
    """A delivery attempt failed in a way Temporal retries."""
    DELIVERY_RETRIES.labels(channel).inc()


def count_rate_limit_wait(channel: str, seconds: float) -> None:
    """A delivery waited `seconds` for its channel's rate limit."""
    RATE_LIMIT_WAITS.labels(channel or "unnamed").inc()
    RATE_LIMIT_WAIT_SECONDS.labels(channel or "unnamed").inc(seconds)


def outcome_of(status_code: int) -> str:
    """The outcome word a provider's HTTP status counts as."""
    if status_code < 400:
        return "success"
    if status_code == 429:
        return "rate_limited"
    return "client_error" if status_code < 500 else "server_error"


class MeasuredTransport(httpx.AsyncBaseTransport):
    """An httpx transport that times each request to a channel provider and counts its
    outcome, around the transport that sends it (see `measured_transport`)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, channel: str) -> None:
        self.inner, self.channel = inner, channel

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._observe("timeout", started)
            raise
        except httpx.TransportError:
            self._observe("unreachable", started)
            raise
        self._observe(outcome_of(response.status_code), started)
        return response

    def _observe(self, outcome: str, started: float) -> None:
        PROVIDER_SECONDS.labels(self.channel).observe(time.perf_counter() - started)
        PROVIDER_REQUESTS.labels(self.channel, outcome).inc()

    async def aclose(self) -> None:
        await self.inner.aclose()


def measured_transport(channel: str, *, limits: httpx.Limits) -> MeasuredTransport:
    """The transport for one channel provider's client, pooled to `limits`."""
    return MeasuredTransport(httpx.AsyncHTTPTransport(limits=limits), channel=channel)


class _Answer(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def fallback(self) -> str | None: ...


P = ParamSpec("P")
A = TypeVar("A", bound=_Answer)


def counted_ranking(
    recommend: Callable[P, Awaitable[A]],
) -> Callable[P, Coroutine[Any, Any, A]]:
    """Counts each answer of a `recommend` method by its source and fallback reason."""

    @functools.wraps(recommend)
    async def counted(*args: P.args, **kwargs: P.kwargs) -> A:
        answer = await recommend(*args, **kwargs)
        RANKING_ANSWERS.labels(answer.source, answer.fallback or "none").inc()
        return answer

    return counted
