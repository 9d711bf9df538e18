"""One trace from the ingestion request to the outgoing webhook, on the real stack.

Spans go to an in-memory exporter in this process: the tracer provider is global,
as OpenTelemetry's instrumentations expect, so this module sets it once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.settings import Settings
from orchestrator.temporal import SANDBOX
from orchestrator.tracing.provider import build_provider, tracing_enabled
from tests.conftest import StackFactory
from tests.support.collector import Collector, running_collector
from tests.support.receiver import Receiver
from tests.support.spans import recording_exporter
from tests.support.workspace import WRITE_KEY
from tests.workflows.test_delivery import ONE_SEND
from workflows.journey import JourneyWorkflow


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = recording_exporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_one_trace_from_the_request_to_the_webhook(
    make_stack: StackFactory, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    stack = await make_stack({"once": ONE_SEND}, tracing=True)
    await stack.track("u1", "Signed Up")
    assert (await stack.result("once", "u1")).messages_sent == 1
    finished = spans.get_finished_spans()

    request = named(finished, "POST /v1/track")
    endpoint = named(finished, "fastapi.endpoint")
    routing = named(finished, "route events")
    start = named(finished, "SignalWithStartWorkflow:JourneyWorkflow")
    run = named(finished, "RunWorkflow:JourneyWorkflow")
    schedule = named(finished, "StartActivity:send_message")
    send = named(finished, "RunActivity:send_message")
    webhook = named(finished, "POST")
    # one trace, every span in it
    assert request.context is not None
    trace_id = request.context.trace_id
    assert {s.context.trace_id for s in finished if s.context} == {trace_id}
    # request -> its endpoint -> routing (carried in memory into the routing task)
    # -> signal-with-start
    assert request.kind == SpanKind.SERVER
    assert request.parent is None
    assert parent_of(endpoint) == span_id(request)
    assert parent_of(routing) == span_id(endpoint)
    assert routing.attributes == {"events": 1, "users": 1}
    assert parent_of(start) == span_id(routing)
    assert start.attributes == {"temporalWorkflowID": "journey:once:u1"}
    # -> the workflow run, and the send it schedules (arbitration runs inside it) -> the
    # send activity -> the webhook
    assert parent_of(run) == span_id(start)
    assert not [s for s in finished if s.name.endswith(":arbitrate_message")]
    assert parent_of(schedule) == span_id(start)
    assert parent_of(send) == span_id(schedule)
    assert parent_of(webhook) == span_id(send)
    assert webhook.kind == SpanKind.CLIENT
    assert webhook.attributes is not None
    assert webhook.attributes["url.full"] == f"{receiver.url}/email"
    assert webhook.attributes["http.response.status_code"] == 200

    # the receiver can join the trace: its parent is the webhook's span
    [email] = receiver.at("/email")
    assert webhook.attributes["webhook.id"] == email.msg_id
    version, trace_hex, parent_hex, flags = email.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    assert int(trace_hex, 16) == trace_id
    assert int(parent_hex, 16) == span_id(webhook)


async def test_a_callers_traceparent_is_continued(
    make_stack: StackFactory, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    stack = await make_stack({"once": ONE_SEND}, tracing=True)
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    response = await stack.http.post(
        f"{stack.api_url}/v1/track",
        json={"userId": "u2", "event": "Signed Up", "messageId": str(uuid.uuid4())},
        auth=(WRITE_KEY, ""),
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
    )
    assert response.status_code == 200, response.text
    await stack.result("once", "u2")
    request = named(spans.get_finished_spans(), "POST /v1/track")
    assert request.parent is not None
    assert request.parent.span_id == int(caller_span, 16)
    [email] = receiver.at("/email")
    assert email.headers["traceparent"].split("-")[1] == caller_trace


async def test_traced_histories_replay(
    make_stack: StackFactory, spans: InMemorySpanExporter
) -> None:
    # The interceptor adds headers, not commands: the workflow replays the same with
    # it or without it, and a replay records no spans (they were recorded live).
    stack = await make_stack({"once": ONE_SEND}, tracing=True)
    await stack.track("u3", "Signed Up")
    await stack.result("once", "u3")
    history = await stack.handle("once", "u3").fetch_history()
    spans.clear()
    for interceptors in ([TracingInterceptor()], []):
        replayer = Replayer(
            workflows=[JourneyWorkflow],
            data_converter=pydantic_data_converter,
            workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
            interceptors=interceptors,
        )
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure
    assert spans.get_finished_spans() == ()


async def test_tracing_off_sends_no_header_and_records_nothing(
    make_stack: StackFactory, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    # A provider is set in this process (by the fixture), yet this stack is not traced.
    stack = await make_stack({"once": ONE_SEND})
    await stack.http.post(
        f"{stack.api_url}/v1/track",
        json={"userId": "u4", "event": "Signed Up", "messageId": str(uuid.uuid4())},
        auth=(WRITE_KEY, ""),
        headers={"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"},
    )
    assert (await stack.result("once", "u4")).messages_sent == 1
    [email] = receiver.at("/email")
    assert "traceparent" not in email.headers
    assert [(s.name, s.attributes) for s in spans.get_finished_spans()] == []


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    async with running_collector() as found:
        yield found


@pytest.mark.parametrize(
    ("environ", "service"),
    [({}, "orchestrator-worker"), ({"OTEL_SERVICE_NAME": "journeys-eu"}, "journeys-eu")],
)
async def test_spans_are_exported_to_the_otlp_endpoint(
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    service: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = Settings(otlp_endpoint=collector.url)
    provider = build_provider(settings, service="orchestrator-worker")
    with provider.get_tracer("test").start_as_current_span("RunActivity:send_message"):
        pass
    # The exporter posts from the calling thread: not the loop's, which serves the collector.
    assert await asyncio.to_thread(provider.force_flush)
    await asyncio.to_thread(provider.shutdown)
    assert [(s.service, s.name) for s in collector.spans] == [(service, "RunActivity:send_message")]


@pytest.mark.parametrize(
    ("endpoint", "environ", "on"),
    [
        (None, {}, False),
        ("http://127.0.0.1:4318", {}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ("http://127.0.0.1:4318", {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_when_tracing_is_on(endpoint: str | None, environ: dict[str, str], on: bool) -> None:
    assert tracing_enabled(Settings(otlp_endpoint=endpoint), environ) is on


@pytest.mark.parametrize(
    "endpoint", ["collector:4318", "127.0.0.1:4318", "grpc://c:4317", "http://"]
)
def test_a_bad_endpoint_is_refused_by_name(endpoint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(otlp_endpoint=endpoint)
    [error] = refused.value.errors()
    assert error["loc"] == ("otlp_endpoint",)
    assert "an http(s) URL" in error["msg"]
