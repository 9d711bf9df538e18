"""The product wired together for a test: API on loopback, worker, routing, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from orchestrator.api import create_app
from orchestrator.deploy import deploy_workspace
from orchestrator.enrollment import workflow_of
from orchestrator.routing import Clock, utc_now
from orchestrator.services import Services, build_services
from orchestrator.settings import Settings
from orchestrator.stack.servers import serving
from orchestrator.tracing.temporal import traced
from orchestrator.worker import running_worker
from orchestrator.workspace import load_workspace
from tests.support.workspace import SERVER_KEY, WRITE_KEY
from workflows.activities import JourneyStore
from workflows.messages import JourneyResult, JourneyState
from workflows.search import workflow_id

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    api_url: str
    http: httpx.AsyncClient
    services: Services
    client: Client
    workspace: Path
    skip: Callable[[], Awaitable[None]] | None = None

    async def send(self, path: str, body: Any, *, key: str = WRITE_KEY) -> httpx.Response:
        """POST as a source, with its write key."""
        return await self.http.post(f"{self.api_url}{path}", json=body, auth=(key, ""))

    async def call(
        self, method: str, path: str, *, key: str | None = SERVER_KEY, **kwargs: Any
    ) -> httpx.Response:
        """Call the API with a server API key (or a user token) as the bearer."""
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.http.request(method, f"{self.api_url}{path}", headers=headers, **kwargs)

    async def track(
        self,
        user_id: str,
        event: str,
        properties: dict[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> httpx.Response:
        body = {
            "userId": user_id,
            "event": event,
            "properties": properties or {},
            "messageId": message_id or str(uuid.uuid4()),
        }
        response = await self.send("/v1/track", body)
        assert response.status_code == 200, response.text
        return response

    async def identify(self, user_id: str, traits: dict[str, Any]) -> None:
        response = await self.send(
            "/v1/identify", {"userId": user_id, "traits": traits, "messageId": str(uuid.uuid4())}
        )
        assert response.status_code == 200, response.text

    async def result(self, journey: str, user_id: str, timeout: float = 60) -> JourneyResult:
        """The journey's result once it ends; on the time-skipping server, time moves on."""
        handle = self.handle(journey, user_id)

        async def closed() -> bool:
            try:
                description = await handle.describe()
            except RPCError:
                return False
            return description.status != WorkflowExecutionStatus.RUNNING

        await eventually(closed, skip=self.skip, timeout=timeout)
        return await handle.result()

    def handle(self, journey: str, user_id: str) -> WorkflowHandle[Any, JourneyResult]:
        return self.client.get_workflow_handle(
            workflow_id(journey, user_id), result_type=JourneyResult
        )

    async def state(self, journey: str, user_id: str) -> JourneyState:
        state: JourneyState = await self.handle(journey, user_id).query(
            "state", result_type=JourneyState
        )
        return state

    async def redeploy(self) -> None:
        await deploy_workspace(self.services.engine, load_workspace(self.workspace))
        await self.services.registry.reload()


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 30.0,
    skip: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Poll until `check()` holds; `skip` (e.g. time-skipping) runs between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        if skip is not None:
            await skip()
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running_stack(
    *,
    client: Client,
    engine: AsyncEngine,
    database_url: str,
    workspace: Path,
    clock: Clock = utc_now,
    store: JourneyStore | None = None,
    history_limit: int | None = None,
    skip: Callable[[], Awaitable[None]] | None = None,
    route_within: float = 60.0,
    sweep_after: float | None = None,
    upkeep: bool = False,
    tracing: bool = False,
) -> AsyncIterator[Stack]:
    """Deploy the workspace, serve the API and run a worker on a fresh task queue; with
    `sweep_after`, the API's sweeper routes events left unrouted that long; `upkeep`
    starts the workflow that keeps computed traits current as time passes; `tracing`
    traces the API and Temporal as an OTLP endpoint would (spans go to whatever tracer
    provider the test process set, not to that endpoint)."""
    ws = load_workspace(workspace)
    await deploy_workspace(engine, ws)
    settings = Settings(
        database_url=database_url,
        task_queue=f"test-{uuid.uuid4()}",
        workspace=workspace,
        # Tests read what a request routed right after it answers (on a busy machine).
        route_within_seconds=route_within,
        reroute_after_seconds=sweep_after or 30.0,
        otlp_endpoint="http://127.0.0.1:4318" if tracing else None,
    )
    if tracing:
        client = traced(client)
    services = build_services(settings, workspace=ws, engine=engine, client=client, clock=clock)
    if history_limit is not None:
        services.router.history_limit = history_limit
    app = create_app(services, sweep=sweep_after is not None)
    try:
        async with (
            serving(app) as url,
            running_worker(
                client,
                workspace=ws,
                engine=engine,
                task_queue=settings.task_queue,
                store=store,
                upkeep=upkeep,
            ),  # fmt: skip
            httpx.AsyncClient(timeout=30) as http,
        ):
            yield Stack(url, http, services, client, workspace, skip)
    finally:
        if upkeep:
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(f"segments:{settings.task_queue}").terminate()
            with contextlib.suppress(RPCError):
                await client.get_schedule_handle(f"retention:{settings.task_queue}").delete()
        await terminate_unfinished(client, engine)


async def terminate_unfinished(client: Client, engine: AsyncEngine) -> None:
    # A journey left waiting would wake on a task queue nobody polls any more, and the
    # time-skipping server cannot skip time past a task that nobody takes.
    async with engine.connect() as conn:
        active = await conn.execute(
            text(
                "SELECT journey_key, user_id, instance, workflow_id FROM enrollments"
                " WHERE status = 'active'"
            )
        )
        ids = {workflow_of(row) for row in active}
    for wid in ids:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(wid).terminate("test finished")


@dataclass
class WorkerProcesses:
    """In-process services (for the API) and what `orchestrator worker` processes need
    to serve the same workspace on a fresh task queue."""

    services: Services
    env: dict[str, str]

    async def start(self, *, quiet: bool = False) -> asyncio.subprocess.Process:
        """Start one more worker process."""
        out = asyncio.subprocess.DEVNULL if quiet else None
        return await asyncio.create_subprocess_exec(
            str(BIN / "orchestrator"), "worker", env=self.env, stdout=out, stderr=out
        )


async def worker_processes(
    root: Path, *, engine: AsyncEngine, postgres_url: str, client: Client, prefix: str
) -> WorkerProcesses:
    """Deploy the workspace at `root` and prepare worker processes for it."""
    workspace = load_workspace(root)
    await deploy_workspace(engine, workspace)
    queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=postgres_url, task_queue=queue, workspace=root)
    services = build_services(settings, workspace=workspace, engine=engine, client=client)
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "ORCHESTRATOR_WORKSPACE": str(root),
        "ORCHESTRATOR_TASK_QUEUE": queue,
        # Several workers on one machine: none serves metrics (tests/orchestrator/test_metrics).
        "ORCHESTRATOR_METRICS_PORT": "0",
        "ORCHESTRATOR_TEMPORAL_METRICS_PORT": "0",
    }
    return WorkerProcesses(services, env)
