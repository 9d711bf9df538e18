"""What the doctor asks Temporal: does the frontend answer, does the namespace exist,
are the journey search attributes registered, and do workers poll the task queues."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeTaskQueueRequest,
    GetSystemInfoRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.doctor.report import Finding, fail, ok, warn
from orchestrator.settings import Settings
from orchestrator.temporal import connect, retention_queue, segments_queue
from workflows import search


async def check_frontend(settings: Settings, *, timeout: float) -> tuple[Finding, Client | None]:
    address = settings.temporal_address
    try:
        client = await asyncio.wait_for(connect(address, settings.temporal_namespace), timeout * 2)
        info = await client.workflow_service.get_system_info(
            GetSystemInfoRequest(), timeout=timedelta(seconds=timeout)
        )
    except (Exception, TimeoutError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else _brief(exc)
        return fail(
            "temporal",
            f"cannot reach the Temporal frontend at {address}: {reason}",
            "check ORCHESTRATOR_TEMPORAL_ADDRESS (host:port of the frontend, gRPC) and "
            "that Temporal runs",
        ), None
    return ok("temporal", f"{address} answers (server {info.server_version})"), client


def _brief(exc: BaseException) -> str:
    # The SDK's connection errors carry the whole transport chain; its end says it.
    message = " ".join(str(exc).split())
    for marker in ("Connection refused", "dns error", "timed out", "No route to host"):
        if marker in message:
            return marker.lower()
    return message[:200] or type(exc).__name__


async def check_namespace(client: Client, settings: Settings, *, timeout: float) -> Finding:
    namespace = settings.temporal_namespace
    try:
        described = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return fail(
                "namespace",
                f"namespace '{namespace}' does not exist on {settings.temporal_address}",
                f"create it (`temporal operator namespace create --namespace {namespace}`) "
                "or set ORCHESTRATOR_TEMPORAL_NAMESPACE to an existing one",
            )
        return fail("namespace", f"cannot describe namespace '{namespace}': {exc.message}")
    retention = described.config.workflow_execution_retention_ttl.ToTimedelta()
    return ok(
        "namespace",
        f"'{namespace}' exists (closed workflows kept {_days(retention)} for the UI)",
    )


def _days(period: timedelta) -> str:
    days = period.total_seconds() / 86400
    return f"{days:g} day(s)" if days >= 1 else f"{period.total_seconds() / 3600:g} hour(s)"


async def check_search_attributes(client: Client, settings: Settings, *, timeout: float) -> Finding:
    """Every attribute the journey workflow sets is registered with its type: a workflow
    that sets one that is not fails its task and retries forever."""
    namespace = settings.temporal_namespace
    try:
        found = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )
    except RPCError as exc:
        return fail("search attributes", f"cannot list them in '{namespace}': {exc.message}")
    registered = dict(found.custom_attributes)
    missing, wrong = [], []
    for key in search.ALL:
        wanted = IndexedValueType.ValueType(key.indexed_value_type.value)
        if key.name not in registered:
            missing.append(key.name)
        elif registered[key.name] != wanted:
            wrong.append(f"{key.name} is {_kind(registered[key.name])}, not {_kind(wanted)}")
    if missing:
        return fail(
            "search attributes",
            f"{', '.join(missing)} not registered in namespace '{namespace}': journeys "
            "that set them fail their tasks and retry forever",
            "run `orchestrator register-search-attributes`",
        )
    if wrong:
        return fail(
            "search attributes",
            "; ".join(wrong),
            "remove them (`temporal operator search-attribute remove`) and run "
            "`orchestrator register-search-attributes`",
        )
    return ok("search attributes", f"all {len(search.ALL)} registered in '{namespace}'")


def _kind(value: IndexedValueType.ValueType) -> str:
    return IndexedValueType.Name(value).removeprefix("INDEXED_VALUE_TYPE_").title()


async def check_workers(client: Client, settings: Settings, *, timeout: float) -> Finding:
    """Who polls the task queue and the two queues beside it (segments, retention)."""
    queues = (settings.task_queue, segments_queue(settings.task_queue),
              retention_queue(settings.task_queue))  # fmt: skip
    pollers: dict[str, set[str]] = {}
    try:
        for queue in queues:
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                ),
                timeout=timedelta(seconds=timeout),
            )
            pollers[queue] = {p.identity for p in described.pollers}
    except RPCError as exc:
        return warn("workers", f"cannot describe the task queues: {exc.message}")
    main = pollers[settings.task_queue]
    if not main:
        return warn(
            "workers",
            f"no worker has polled task queue '{settings.task_queue}' lately: journeys stand still",
            "start `orchestrator worker` (as many as you need) with the same "
            "ORCHESTRATOR_TASK_QUEUE",
        )
    idle = [queue for queue in queues[1:] if not pollers[queue]]
    if idle:
        return warn(
            "workers",
            f"{len(main)} worker(s) poll '{settings.task_queue}' but none polls "
            f"{', '.join(idle)}: segments, erasures or retention stand still",
            "run workers of this version (they poll all three queues)",
        )
    return ok("workers", f"{len(main)} worker(s) poll '{settings.task_queue}' "
                         f"({', '.join(sorted(main))})")  # fmt: skip
