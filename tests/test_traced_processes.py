"""Traces and JSON logs across processes: `orchestrator api` and `orchestrator worker`,
configured only by environment variables, export one trace to an OTLP collector."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.deploy import deploy_workspace
from orchestrator.stack.processes import free_port
from orchestrator.workspace import load_workspace
from tests.support.collector import ExportedSpan, running_collector
from tests.support.receiver import Receiver
from tests.support.stack import BIN, eventually, terminate_unfinished
from tests.support.workspace import WRITE_KEY, write_workspace
from tests.workflows.test_delivery import ONE_SEND


async def test_api_and_worker_processes_export_one_trace(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={"once": ONE_SEND})
    await deploy_workspace(engine, load_workspace(root))
    api_port = free_port()
    async with running_collector() as collector:
        env = {
            **os.environ,
            "ORCHESTRATOR_DATABASE_URL": postgres_url,
            "ORCHESTRATOR_TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
            "ORCHESTRATOR_WORKSPACE": str(root),
            "ORCHESTRATOR_TASK_QUEUE": f"traced-{uuid.uuid4().hex[:8]}",
            "ORCHESTRATOR_API_PORT": str(api_port),
            "ORCHESTRATOR_OTLP_ENDPOINT": collector.url,
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s rather than 5 s
        }
        logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ("api", "worker")}
        command = str(BIN / "orchestrator")
        processes = [
            await asyncio.create_subprocess_exec(command, name, env=env, stderr=logs[name])
            for name in ("api", "worker")
        ]
        try:
            api = f"http://127.0.0.1:{api_port}"
            async with httpx.AsyncClient(timeout=10) as http:

                async def ready() -> bool:
                    try:
                        return (await http.get(f"{api}/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await eventually(ready, timeout=60)
                response = await http.post(
                    f"{api}/v1/track",
                    json={"userId": "ada", "event": "Signed Up", "messageId": str(uuid.uuid4())},
                    auth=(WRITE_KEY, ""),
                )
                assert response.status_code == 200, response.text
            [email] = await receiver.wait_for(lambda rs: len(rs) == 1, timeout=60)
            trace_id = email.headers["traceparent"].split("-")[1]

            def in_trace() -> list[ExportedSpan]:
                return [s for s in collector.spans if s.trace_id == trace_id]

            async def exported() -> bool:
                names = {s.name for s in in_trace()}
                return {"POST /v1/track", "RunActivity:send_message", "POST"} <= names

            await eventually(exported, timeout=30)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 60) for p in processes]
            await terminate_unfinished(dev_server.client, engine)
        assert codes == [0, 0]

    spans = {s.name: s for s in in_trace()}
    # the request's half in the API process, the workflow's and the send's in the worker's
    assert spans["POST /v1/track"].service == "orchestrator-api"
    assert spans["SignalWithStartWorkflow:JourneyWorkflow"].service == "orchestrator-api"
    assert spans["RunActivity:send_message"].service == "orchestrator-worker"
    assert spans["POST"].service == "orchestrator-worker"
    assert spans["POST"].parent_id == spans["RunActivity:send_message"].span_id
    assert email.headers["traceparent"].split("-")[2] == spans["POST"].span_id

    # the worker's JSON lines: one per object, and the send's carry its ids
    worker_lines = [json.loads(line) for line in read(logs["worker"]).splitlines()]
    sent: list[dict[str, Any]] = [
        line for line in worker_lines if line.get("message_id") == email.msg_id
    ]
    assert sent, worker_lines
    assert all(line["trace_id"] == trace_id for line in sent)
    assert all(line["user_id"] == "ada" and line["journey_key"] == "once" for line in sent)
    api_lines = [json.loads(line) for line in read(logs["api"]).splitlines()]
    assert any(line["logger"] == "uvicorn.error" for line in api_lines)


def read(log: Any) -> str:
    log.seek(0)
    text: str = log.read()
    log.close()
    return text
