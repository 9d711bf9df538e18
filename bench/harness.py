"""The product as production runs it, on one machine, for benchmarks.

Embedded Postgres and the Temporal dev server (as `make run` starts them), then
`orchestrator api` and `orchestrator worker` as their own processes, configured by
environment like in production. The load generator is the calling process.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from orchestrator.database import create_engine, migrate
from orchestrator.deploy import deploy_workspace
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.stack.processes import free_port
from orchestrator.stack.temporal import TemporalDevServer
from orchestrator.temporal import connect
from orchestrator.workspace import load_workspace

BIN = Path(sys.executable).parent
WRITE_KEY = "wk_bench_0123456789"
SERVER_KEY = "sk_bench_0123456789abcdefghijkl"
SECRET = "whsec_SN6HEFrrhJp7Ygw3WCXl9y60mXqXOufBv2Nogw2ifLU="


@dataclass
class BenchStack:
    api_url: str
    database_url: str
    engine: AsyncEngine
    client: Client
    task_queue: str
    workspace: Path
    worker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    temporal: TemporalDevServer
    # The processes' ORCHESTRATOR_* environment, for benchmarks that start more of them.
    env: dict[str, str] = field(default_factory=dict)


def write_workspace(
    root: Path,
    *,
    receiver_url: str,
    journeys: dict[str, str],
    config: str = "",
    files: dict[str, str] | None = None,
) -> Path:
    (root / "journeys").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "orchestrator.yaml").write_text(
        f"workspace: bench\nsources:\n  - name: bench\n    write_key: {WRITE_KEY}\n"
        # Benchmarks measure throughput, not the per-source limit.
        "    rate_limit: {per_second: 1000000, burst: 1000000}\n    server_side: true\n"
        f"api_keys:\n  - {{name: bench, secret: {SERVER_KEY}, scopes: [admin]}}\n"
        f"channels:\n  email:\n    url: {receiver_url}/email\n    signing_secret: {SECRET}\n"
        f"links:\n  signing_secret: {SECRET}\n{config}"
    )
    (root / "templates" / "note.yaml").write_text(
        "email:\n  subject: \"Hello {{ user.first_name | default('there') }}\"\n"
        '  text: "Your cart: {{ event.properties.cart_value }}"\n'
    )
    for name, text in journeys.items():
        (root / "journeys" / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    for name, text in (files or {}).items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


@asynccontextmanager
async def bench_stack(
    journeys: dict[str, str],
    *,
    receiver_url: str = "http://127.0.0.1:9",
    worker: bool = True,
    api_processes: int = 1,
    config: str = "",
    files: dict[str, str] | None = None,
    environment: dict[str, str] | None = None,
) -> AsyncIterator[BenchStack]:
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        state = Path(tmp)
        workspace = write_workspace(
            state / "workspace", receiver_url=receiver_url, journeys=journeys, config=config,
            files=files,
        )  # fmt: skip
        postgres = EmbeddedPostgres(state / "postgres")
        temporal = TemporalDevServer(
            state_dir=state / "temporal", port=free_port(), ui_port=free_port()
        )
        temporal.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            database_url = await asyncio.to_thread(postgres.start)
            await migrate(database_url)
            await temporal.wait_ready()
            engine = create_engine(database_url, pool_size=20)
            await deploy_workspace(engine, load_workspace(workspace))
            api_port = free_port()
            env = {
                **os.environ,
                "ORCHESTRATOR_DATABASE_URL": database_url,
                "ORCHESTRATOR_TEMPORAL_ADDRESS": temporal.address,
                "ORCHESTRATOR_WORKSPACE": str(workspace),
                "ORCHESTRATOR_API_PORT": str(api_port),
                "ORCHESTRATOR_TASK_QUEUE": "bench",
                "ORCHESTRATOR_DB_POOL_SIZE": "20",
                "ORCHESTRATOR_API_PROCESSES": str(api_processes),
                **(environment or {}),
            }
            logs = open(state / "processes.log", "ab")  # noqa: SIM115
            api = subprocess.Popen(
                [str(BIN / "orchestrator"), "api"], env=env, stdout=logs, stderr=logs
            )
            processes.append(api)
            work = subprocess.Popen(
                [str(BIN / "orchestrator"), "worker"], env=env, stdout=logs, stderr=logs
            )
            processes.append(work)
            if not worker:
                work.terminate()
            api_url = f"http://127.0.0.1:{api_port}"
            await _wait_http(f"{api_url}/healthz")
            client = await connect(temporal.address)
            yield BenchStack(
                api_url, database_url, engine, client, "bench", workspace, work, api, temporal, env
            )
            await engine.dispose()
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    print(f"{process.args[1:]} did not stop in 30 s; killed", file=sys.stderr)
                    process.kill()
            await asyncio.to_thread(temporal.stop)
            await asyncio.to_thread(postgres.stop)


async def _wait_http(url: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.2)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)} p50={percentile(values, 50):.1f} ms "
        f"p99={percentile(values, 99):.1f} ms mean={statistics.fmean(values):.1f} ms"
    )
