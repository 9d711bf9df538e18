"""A worker process killed mid-delivery: the message reached the provider but was never
recorded as sent. The next worker sends the same message, under the same id, once more
(the provider drops the duplicate by webhook-id) and the journey counts it once."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.api import create_app
from orchestrator.stack.servers import serving
from tests.support.db import rows
from tests.support.receiver import Received, Receiver
from tests.support.stack import terminate_unfinished, worker_processes
from tests.support.workspace import WRITE_KEY, write_workspace
from tests.workflows.test_delivery import ONE_SEND
from workflows.messages import JourneyResult
from workflows.search import workflow_id


async def test_a_worker_killed_between_delivery_and_recording_does_not_double_send(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={"once": ONE_SEND})
    client = dev_server.client
    workers = await worker_processes(
        root, engine=engine, postgres_url=postgres_url, client=client, prefix="crash"
    )
    services = workers.services
    first = await workers.start()

    def kill_the_worker(request: Received) -> None:
        # The provider has the message; the worker dies before it can record that.
        if request.path == "/email" and first.returncode is None:
            os.kill(first.pid, signal.SIGKILL)

    receiver.on_request = kill_the_worker
    second = None
    try:
        async with (
            serving(create_app(services, sweep=False)) as api_url,
            httpx.AsyncClient() as http,
        ):
            response = await http.post(
                f"{api_url}/v1/track",
                auth=(WRITE_KEY, ""),
                json={"userId": "u1", "event": "Signed Up"},
            )
            assert response.status_code == 200
            await receiver.wait_for(lambda rs: len(rs) == 1, timeout=60)
            assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
            [row] = await rows(engine, "SELECT status, attempts FROM messages")
            assert row == {"status": "sending", "attempts": 1}

            second = await workers.start()
            # the heartbeat timeout (10 s) notices the dead worker; the retry goes out
            await receiver.wait_for(lambda rs: len(rs) == 2, timeout=60)
            handle = client.get_workflow_handle(
                workflow_id("once", "u1"), result_type=JourneyResult
            )
            result = await asyncio.wait_for(handle.result(), 30)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        await terminate_unfinished(client, engine)

    once, again = receiver.at("/email")
    assert once.msg_id == again.msg_id
    assert once.json["data"]["content"] == again.json["data"]["content"]
    assert once.verified
    assert again.verified
    assert (result.status, result.messages_sent) == ("completed", 1)
    [row] = await rows(engine, "SELECT id, status, attempts FROM messages")
    assert row == {"id": once.msg_id, "status": "sent", "attempts": 2}
