"""The production shape: `orchestrator migrate`, `journeys deploy`, `api` (two processes) and
`worker` as separate processes, configured only by ORCHESTRATOR_* variables."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from orchestrator.stack.processes import free_port
from orchestrator.workspace import load_config, secrets_of
from tests.support.receiver import Receiver
from tests.support.stack import terminate_unfinished
from tests.test_end_to_end import WRITE_KEY

BIN = Path(sys.executable).parent


async def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def own_secrets(workspace: Path) -> dict[str, str]:
    """Replace the example's published secrets with `${ENV}` references, as a production
    workspace keeps them; return the variables (fresh secrets) by name."""
    config = workspace / "orchestrator.yaml"
    text, env = config.read_text(), {}
    for where, secret in secrets_of(load_config(workspace)).items():
        name = "PROD_" + where.upper().replace(".", "_")
        fresh = (
            "whsec_" + base64.b64encode(os.urandom(32)).decode()
            if secret.startswith("whsec_")
            else f"prod_{secrets.token_hex(20)}"
        )
        text, env[name] = text.replace(secret, "${" + name + "}"), fresh
    config.write_text(text)
    return env


async def test_api_and_worker_processes_deliver_a_journey(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    receiver: Receiver,
    example: Path,
    engine: object,
) -> None:
    api_port = free_port()
    env = {
        **os.environ,
        "ORCHESTRATOR_ENVIRONMENT": "production",
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
        "ORCHESTRATOR_WORKSPACE": str(example),
        "ORCHESTRATOR_API_PORT": str(api_port),
        "ORCHESTRATOR_API_PROCESSES": "2",
        "ORCHESTRATOR_TASK_QUEUE": "production-test",
        "ORCHESTRATOR_TEMPORAL_METRICS_PORT": "0",  # not a fixed port on a shared machine
        "ORCHESTRATOR_METRICS_PORT": "0",
    }
    # A copy of the example, published secrets and all, does not serve in production.
    for command in ("api", "worker"):
        code, output = await run(command, env=env)
        assert code == 1, output
        assert output.startswith("refusing to serve in production: api_keys.crm_backend.secret")
        assert len(output.splitlines()) == 1
    env |= own_secrets(example)
    receiver.secrets = {
        channel: env[f"PROD_CHANNELS_{channel.upper()}_SIGNING_SECRET"]
        for channel in ("email", "push", "in_app", "web")
    }
    assert await run("migrate", env=env) == (0, "database is up to date\n")
    code, output = await run("journeys", "deploy", env=env)
    assert code == 0, output
    assert "welcome_series" in output
    api = await asyncio.create_subprocess_exec(str(BIN / "orchestrator"), "api", env=env)
    worker = await asyncio.create_subprocess_exec(str(BIN / "orchestrator"), "worker", env=env)
    try:
        url = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(200):
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert len(children_of(api.pid)) == 2
            for user in ("prod-ada", "prod-grace", "prod-linus"):
                response = await http.post(
                    f"{url}/v1/identify",
                    auth=(WRITE_KEY, ""),
                    json={"userId": user, "traits": {"email": f"{user}@example.com"}},
                )
                assert response.status_code == 200
                response = await http.post(
                    f"{url}/v1/track",
                    auth=(WRITE_KEY, ""),
                    json={"userId": user, "event": "Signed Up"},
                )
                assert response.status_code == 200
        await receiver.wait_for(lambda rs: len(rs) == 3, timeout=30)
        assert {r.json["data"]["recipient"]["user_id"] for r in receiver.requests} == {
            "prod-ada",
            "prod-grace",
            "prod-linus",
        }
        assert all(r.verified for r in receiver.requests)
    finally:
        api_children = children_of(api.pid)
        for process in (api, worker):
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in (api, worker)]
        await terminate_unfinished(dev_server.client, engine)
    assert codes == [0, 0]
    assert all(not Path(f"/proc/{pid}").exists() for pid in api_children)
