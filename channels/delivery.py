"""Signed HTTP delivery shared by every adapter: one Standard Webhooks POST per message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from channels.base import PermanentDeliveryError, RetryableDeliveryError
from channels.metrics import count_rate_limit_wait
from channels.signing import sign
from channels.tracing import record_status, webhook_span

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RateLimit:
    """A token bucket: at most `per_second` requests on average, `burst` at once.

    `acquire` waits for its turn (in arrival order) rather than fail: a provider's
    limit is a pace to keep, not an error. It paces one process. `take` does not
    wait: it says how long the caller would have to (ingestion answers 429 with it).
    """

    def __init__(self, per_second: float, burst: int = 1, *, name: str = "") -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
        self.per_second, self.burst, self.name = per_second, burst, name  # name: metrics'
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        started, queued = time.monotonic(), self._lock.locked()
        async with self._lock:
            while True:
                wait = self.take()
                if not wait:
                    break
                queued = True
                await asyncio.sleep(wait)
        if queued:
            count_rate_limit_wait(self.name, time.monotonic() - started)

    def take(self) -> float:
        """Take a token if one is there (0.0), else the seconds until there is one."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.per_second)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.per_second


class SignedPoster:
    """POSTs JSON signed with the given secrets; classifies failures for the retry policy."""

    def __init__(
        self,
        *,
        url: str,
        secrets: Sequence[str],
        client: httpx.AsyncClient,
        timeout: float = 10.0,
        clock: Clock = utc_now,
        rate_limit: RateLimit | None = None,
        max_in_flight: int = 16,
    ) -> None:
        if not secrets:
            raise ValueError("a signed endpoint needs at least one secret")
        self.url, self.secrets, self.client = url, list(secrets), client
        self.timeout, self.clock, self.rate_limit = timeout, clock, rate_limit
        # Parsed once: httpx would parse the URL and build the timeout on every request.
        self._url, self._timeout = httpx.URL(url), httpx.Timeout(timeout)
        # Requests beyond this wait here rather than in httpx's pool, whose bookkeeping
        # grows with its queue (at 64 queued it cost more CPU than the requests).
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def post(
        self,
        payload: Mapping[str, Any],
        *,
        msg_id: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Deliver once; raise RetryableDeliveryError or PermanentDeliveryError on failure."""
        body = orjson.dumps(payload, default=str)
        if self.rate_limit is not None:
            await self.rate_limit.acquire()
        signed = {**(headers or {}), "content-type": "application/json"}
        signed.update(sign(self.secrets, msg_id=msg_id, body=body, now=self.clock()))
        try:
            with webhook_span(method, self._url, msg_id=msg_id, headers=signed) as span:
                async with self._in_flight:
                    response = await self.client.request(
                        method, self._url, content=body, headers=signed, timeout=self._timeout
                    )
                record_status(span, response.status_code)
        except httpx.TimeoutException as exc:
            raise RetryableDeliveryError(f"timed out after {self.timeout}s: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise RetryableDeliveryError(f"could not reach {self.url}: {exc!r}") from exc
        status = response.status_code
        if status < 300:
            return response
        reason = f"{self.url} answered {status}: {response.text[:300]}"
        if status == 429 or status >= 500 or status == 408:
            raise RetryableDeliveryError(
                reason, status_code=status, retry_after=_retry_after(response, self.clock())
            )
        raise PermanentDeliveryError(reason, status_code=status)


def _retry_after(response: httpx.Response, now: datetime) -> float | None:
    """Seconds to wait, from `Retry-After: 120` or `Retry-After: <HTTP date>` (RFC 9110)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
