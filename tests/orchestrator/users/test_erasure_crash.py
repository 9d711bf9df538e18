"""Erasure is a durable workflow: the worker process running it is SIGKILLed mid-erasure,
and a new worker finishes it, resuming at the step the dead one had reached."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.api import create_app
from orchestrator.stack.servers import serving
from orchestrator.users.erasure import ErasureResult
from tests.orchestrator.users.test_erasure import JOURNEY
from tests.support import scan
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually, terminate_unfinished, worker_processes
from tests.support.workspace import ADMIN_KEY, WRITE_KEY, write_workspace

USER = "cora-5b1e"
BLOCKED = (
    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
    "AND query LIKE '%DELETE FROM profiles%'"
)


async def test_an_erasure_whose_worker_is_killed_finishes_on_the_next_worker(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    engine: AsyncEngine,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url,
                           journeys={"onboarding": JOURNEY})  # fmt: skip
    client = dev_server.client
    workers = await worker_processes(
        root, engine=engine, postgres_url=postgres_url, client=client, prefix="erase"
    )
    first = await workers.start()
    second = None
    try:
        async with (
            serving(create_app(workers.services, sweep=False)) as api_url,
            httpx.AsyncClient(timeout=30) as http,
        ):
            identify = {"userId": USER, "traits": {"email": "cora@example.com"}}
            assert (await http.post(f"{api_url}/v1/identify", auth=(WRITE_KEY, ""),
                                    json=identify)).status_code == 200  # fmt: skip
            batch = [{"type": "track", "userId": USER, "event": "Viewed", "messageId": f"v{i}"}
                     for i in range(300)]  # fmt: skip
            batch.append({"type": "track", "userId": USER, "event": "Signed Up"})
            sent = await http.post(f"{api_url}/v1/batch", auth=(WRITE_KEY, ""),
                                   json={"batch": batch})  # fmt: skip
            assert sent.status_code == 200, sent.text
            await receiver.wait_for(lambda rs: any(r.path == "/in_app" for r in rs), timeout=60)
            [events] = await rows(engine, "SELECT count(*) AS n FROM events WHERE user_id = :u",
                                  u=USER)  # fmt: skip

            # Hold the profile, so the erasure stops at that step with events behind it.
            async with engine.connect() as holder:
                transaction = await holder.begin()
                await holder.execute(
                    text("SELECT 1 FROM profiles WHERE user_id = :u FOR UPDATE"), {"u": USER}
                )
                response = await http.delete(
                    f"{api_url}/v1/users/{USER}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
                )
                assert response.status_code == 202, response.text

                async def blocked() -> bool:
                    return (await rows(engine, BLOCKED))[0]["n"] > 0

                await eventually(blocked, timeout=60)
                os.kill(first.pid, signal.SIGKILL)
                assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
                left = await rows(engine, "SELECT count(*) AS n FROM events WHERE user_id = :u",
                                  u=USER)  # fmt: skip
                assert left == [{"n": 0}]  # the dead worker got that far
                await transaction.rollback()

            second = await workers.start()
            handle = client.get_workflow_handle(
                response.json()["workflow_id"], result_type=ErasureResult
            )
            # the heartbeat timeout (10 s) notices the dead worker; the retry resumes
            result = await asyncio.wait_for(handle.result(), 120)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        await terminate_unfinished(client, engine)

    # the counts are exact across the crash: the events the dead worker deleted too
    assert result.counts["events"] == events["n"]
    assert result.counts["profiles"] == 1
    assert await scan.naming(engine, [USER]) == {}
    assert not [w async for w in client.list_workflows(f"UserId = '{USER}'")]
    [state] = await rows(engine, "SELECT status, user_id FROM erasures")
    assert state == {"status": "erased", "user_id": None}
