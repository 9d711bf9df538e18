"""What traces and JSON logs cost: signed webhook POSTs per second with tracing off and
on, and microseconds per log line as text and as JSON.

Off is how a process runs without ORCHESTRATOR_OTLP_ENDPOINT: no span is current, so
the delivery makes no span and sends no header. On, each POST runs inside a span as
the send activity's (the tracing interceptor's) would, the delivery adds its client
span and the `traceparent` header, and the SDK batches both spans to an OTLP/HTTP
collector over loopback. The provider (and collector) is another process
(`bench/provider.py`) that verifies every signature; rounds alternate off and on.

    .venv/bin/python -m bench.tracing [--messages 3000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import subprocess
import sys
import time
import uuid

import httpx
from opentelemetry import trace

from bench.harness import _wait_http
from channels.delivery import SignedPoster
from orchestrator.logs.formats import TEXT_FORMAT, JsonLines
from orchestrator.logs.ids import bound
from orchestrator.settings import Settings
from orchestrator.stack.processes import free_port
from orchestrator.tracing.provider import build_provider

SECRET = "whsec_SN6HEFrrhJp7Ygw3WCXl9y60mXqXOufBv2Nogw2ifLU="
PAYLOAD = {"type": "message.email", "data": {"subject": "Hello Ada", "html": "<p>" + "x" * 800}}


async def deliver(
    poster: SignedPoster, *, messages: int, concurrency: int, traced: bool
) -> tuple[float, float]:
    """Messages per second through `poster`, `concurrency` at once, and this process's
    CPU time per message in µs (all its threads: the span exporter's included), which
    other processes on the machine disturb less than the rate."""
    tracer = trace.get_tracer("bench")
    queue = iter(range(messages))

    async def sender() -> None:
        for _ in queue:
            if traced:
                with tracer.start_as_current_span("RunActivity:send_message"):
                    await poster.post(PAYLOAD, msg_id=str(uuid.uuid4()))
            else:
                await poster.post(PAYLOAD, msg_id=str(uuid.uuid4()))

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    if traced:  # the spans of this round leave the process before it counts as done
        trace_provider = trace.get_tracer_provider()
        await asyncio.to_thread(trace_provider.force_flush)  # type: ignore[attr-defined]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return messages / elapsed, cpu / messages * 1e6


def per_line(formatter: logging.Formatter, lines: int) -> float:
    """Microseconds to format and write one worker line with its ids bound."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    log = logging.getLogger("bench.logs")
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.INFO)
    with bound(workflow_id="journey:welcome:ada", journey_key="welcome", user_id="ada",
               message_id=str(uuid.uuid4()), activity_type="send_message"):  # fmt: skip
        started = time.perf_counter()
        for n in range(lines):
            log.info("HTTP Request: POST %s %s", "http://127.0.0.1:8750/email", n)
        return (time.perf_counter() - started) / lines * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args()
    port = free_port()
    provider_process = subprocess.Popen(
        [sys.executable, "-m", "bench.provider", "--port", str(port), "--secret", SECRET]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(f"{url}/healthz")
        tracer_provider = build_provider(Settings(otlp_endpoint=url), service="bench")
        trace.set_tracer_provider(tracer_provider)
        limits = httpx.Limits(max_connections=args.in_flight)
        async with httpx.AsyncClient(limits=limits) as client:
            poster = SignedPoster(url=f"{url}/email", secrets=[SECRET], client=client,
                                  max_in_flight=args.in_flight)  # fmt: skip
            await deliver(poster, messages=300, concurrency=args.concurrency, traced=True)
            rates: dict[bool, list[float]] = {False: [], True: []}
            cpu: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for traced in (False, True):
                    rate, used = await deliver(
                        poster, messages=args.messages, concurrency=args.concurrency,
                        traced=traced,
                    )  # fmt: skip
                    rates[traced].append(rate)
                    cpu[traced].append(used)
        tracer_provider.shutdown()
    finally:
        provider_process.terminate()
        provider_process.wait()
    off, on = (statistics.median(rates[t]) for t in (False, True))
    print(f"signed POSTs/s, tracing off: {off:,.0f}  (rounds: "
          f"{', '.join(f'{r:,.0f}' for r in rates[False])})")  # fmt: skip
    print(f"signed POSTs/s, tracing on:  {on:,.0f}  (rounds: "
          f"{', '.join(f'{r:,.0f}' for r in rates[True])})")  # fmt: skip
    cpu_off, cpu_on = (statistics.median(cpu[t]) for t in (False, True))
    print(f"worker CPU per message: off {cpu_off:,.0f} µs, on {cpu_on:,.0f} µs "
          f"(+{cpu_on - cpu_off:,.0f} µs, +{cpu_on / cpu_off - 1:.0%})")  # fmt: skip
    text = per_line(logging.Formatter(TEXT_FORMAT), args.lines)
    json_line = per_line(JsonLines(), args.lines)
    print(f"log line: text {text:.1f} µs, JSON with ids {json_line:.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
