"""An OpenTelemetry collector on loopback: it decodes the OTLP/HTTP trace exports it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.stack.servers import serving


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.url = ""

    @property
    def spans(self) -> list[ExportedSpan]:
        found = []
        for request in self.requests:
            for resource in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                service = attributes.get("service.name", "")
                for scope in resource.scope_spans:
                    for s in scope.spans:
                        ids = (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
                        found.append(ExportedSpan(service, s.name, *ids))
        return found

    async def _traces(self, request: Request) -> Response:
        self.requests.append(ExportTraceServiceRequest.FromString(await request.body()))
        return Response(b"", media_type="application/x-protobuf")


@asynccontextmanager
async def running_collector() -> AsyncIterator[Collector]:
    collector = Collector()
    app = Starlette(routes=[Route("/v1/traces", collector._traces, methods=["POST"])])
    async with serving(app) as url:
        collector.url = url
        yield collector
