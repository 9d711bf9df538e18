"""Temporal client and worker wiring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from orchestrator.logs.activities import ActivityLogIds
from orchestrator.tracing.temporal import client_interceptors
from workflows import search
from workflows.journey import JourneyWorkflow
from workflows.retention import RetentionRun
from workflows.retraining import RetrainRanking
from workflows.segments import AudienceRun, SegmentUpkeep

# Jinja2 compiles conditions lazily (importing inside functions) and keeps a cache
# behind a lock; it is deterministic, so it is shared with the sandbox, not reloaded.
# OpenTelemetry keeps its context and tracer outside the sandbox, as the SDK's tracing
# interceptor requires (its workflow spans are made outside, replay-safe).
SANDBOX = SandboxRestrictions.default.with_passthrough_modules(
    "jinja2", "markupsafe", "opentelemetry"
)


def search_attribute_flags() -> list[str]:
    """`--search-attribute` arguments for `temporal server start-dev`."""
    return [f"{key.name}={_kind(key)}" for key in search.ALL]


def _kind(key: Any) -> str:
    return "Int" if key.indexed_value_type == IndexedValueType.INDEXED_VALUE_TYPE_INT else "Keyword"


async def connect(
    address: str,
    namespace: str = "default",
    *,
    tracing: bool = False,
    runtime: Runtime | None = None,
) -> Client:
    """A client that speaks pydantic models, as the journey workflow does; with `tracing`,
    its calls and its workers' workflows and activities are traced; `runtime` (for its
    metrics) is the SDK's default one unless given."""
    return await Client.connect(
        address, namespace=namespace, data_converter=pydantic_data_converter,
        interceptors=client_interceptors(tracing=tracing), runtime=runtime,
    )  # fmt: skip


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Register the journey search attributes (a no-op when they exist)."""
    request = AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={
            key.name: IndexedValueType.ValueType(key.indexed_value_type.value) for key in search.ALL
        },
    )
    try:
        await client.operator_service.add_search_attributes(request)
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def segments_queue(task_queue: str) -> str:
    """The queue of the workflows that move segments (upkeep, audience runs): their own,
    so that their next step never waits behind thousands of journeys' tasks."""
    return f"{task_queue}.segments"


def segments_worker(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Any],
    workflows: Sequence[type] = (),
) -> Worker:
    """A worker for `segments_queue(task_queue)`: upkeep and audience runs, and the
    other `workflows` that are not journeys (erasures)."""
    return Worker(
        client,
        task_queue=segments_queue(task_queue),
        workflows=[SegmentUpkeep, AudienceRun, *workflows],
        activities=activities,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
        interceptors=[ActivityLogIds()],
    )


def retention_queue(task_queue: str) -> str:
    """The queue of retention runs: their own, so that a run's long activity takes no
    slot from journeys or segments."""
    return f"{task_queue}.retention"


def retention_worker(client: Client, *, task_queue: str, activities: Sequence[Any]) -> Worker:
    """A worker for `retention_queue(task_queue)`: retention runs."""
    return Worker(
        client,
        task_queue=retention_queue(task_queue),
        workflows=[RetentionRun],
        activities=activities,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
        interceptors=[ActivityLogIds()],
        max_concurrent_activities=2,
    )


def journey_worker(
    client: Client, *, task_queue: str, activities: Sequence[Any], **options: Any
) -> Worker:
    """A worker that runs journey workflows, scheduled retraining and their activities."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[JourneyWorkflow, RetrainRanking],
        activities=activities,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
        interceptors=[ActivityLogIds()],
        **options,
    )
