"""`orchestrator dev` as a newcomer runs it: up, a message through, Ctrl-C, nothing left over."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import httpx

from orchestrator.stack.processes import free_port

BIN = Path(sys.executable).parent
# The example backend's key: it may set email addresses (a public key may not).
WRITE_KEY = "wk_dev_backend_c04b6d"
# The example's backend key (examples/retail/orchestrator.yaml), for per-user reads.
EXAMPLE_SERVER_KEY = "sk_dev_crm_backend_5b0e7c2f9a41d6e3"


def processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (postgres and temporal name their data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


class Dev:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.ports = {name: free_port() for name in ("api", "temporal", "ui", "sdk")}
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, sink_port: int, *extra: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(BIN / "orchestrator"), "dev", *extra,
            "--state-dir", str(self.state),
            "--api-port", str(self.ports["api"]),
            "--temporal-port", str(self.ports["temporal"]),
            "--ui-port", str(self.ports["ui"]),
            "--sink-port", str(sink_port),
            "--temporal-metrics-port", str(self.ports["sdk"]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def wait_for_line(self, text: str, timeout: float = 90) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.process is not None and self.process.returncode is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"no line with {text!r}; output:\n" + "\n".join(self.lines))

    def database_url(self) -> str:
        [line] = [line for line in self.lines if line.strip().startswith("Postgres ")]
        return line.split()[-1]

    async def stop(self, sig: signal.Signals) -> int:
        assert self.process is not None
        if sig == signal.SIGINT:
            os.killpg(self.process.pid, sig)  # Ctrl-C reaches the whole group
        else:
            self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 60)
        await self._reader
        return code


async def command(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run `orchestrator ARGS` in `cwd` as a user would in another terminal."""
    environment = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), *args, cwd=cwd, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dev_runs_the_product_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / ".state"  # as if started in tmp_path without --state-dir
    # Not the example's default ports: the workspace follows the ports dev is given.
    sink_port = free_port()
    dev = Dev(state)
    await dev.start(sink_port)
    try:
        await dev.wait_for_line("ready; Ctrl-C stops everything")
        api = f"http://127.0.0.1:{dev.ports['api']}"
        assert any(
            f"Temporal UI    http://127.0.0.1:{dev.ports['ui']}" in line for line in dev.lines
        )
        assert any("journey welcome_series" in line and "new" in line for line in dev.lines)
        assert any(f"Metrics        {api}/metrics" in line for line in dev.lines)
        sdk = f"http://127.0.0.1:{dev.ports['sdk']}/metrics"
        assert any(f"SDK metrics    {sdk}" in line for line in dev.lines)
        async with httpx.AsyncClient(timeout=30) as http:
            traits = {"first_name": "Ada", "email": "ada@example.com"}
            response = await http.post(
                f"{api}/v1/identify",
                auth=(WRITE_KEY, ""),
                json={"userId": "ada", "traits": traits},
            )
            assert response.status_code == 200
            # One process here: the API's /metrics has the worker's too; the SDK's apart.
            scraped = (await http.get(f"{api}/metrics")).text
            assert 'orchestrator_events_accepted_total{source="backend"} 1.0' in scraped
            assert "temporal_" in (await http.get(sdk)).text
            response = await http.post(
                f"{api}/v1/track",
                auth=(WRITE_KEY, ""),
                json={"userId": "ada", "event": "Signed Up"},
            )
            assert response.status_code == 200
            line = await dev.wait_for_line("[sink] email")
            assert "→ ada" in line
            assert "signed ✓" in line
            # the email's unsubscribe link leads to this API
            conn = await asyncpg.connect(dev.database_url())
            try:
                link = await conn.fetchval(
                    "SELECT content->>'unsubscribe_url' FROM messages WHERE channel = 'email'"
                )
            finally:
                await conn.close()
            assert link.startswith(f"{api}/v1/unsubscribe/")
            assert (await http.get(link)).status_code == 200
            # commands run from where dev was started find its database
            code, out, err = await command("decisions", "explain", "ada", cwd=tmp_path)
            assert code == 0, err
            assert "sent on email" in out
            ui = await http.get(f"http://127.0.0.1:{dev.ports['ui']}/")
            assert ui.status_code == 200
            docs = await http.get(f"{api}/docs")
            assert docs.status_code == 200
            # the report pages open with the password the banner prints
            [reports] = [line.split() for line in dev.lines if line.strip().startswith("Reports ")]
            assert reports[1] == f"{api}/reports/"
            page = await http.get(reports[1], auth=("anyone", reports[3].rstrip(",")))
            assert page.status_code == 200
            assert "welcome_series" in page.text
        assert processes_using(state)  # postgres and temporal are running
    finally:
        code = await dev.stop(signal.SIGINT)
    assert code == 0, "\n".join(dev.lines)
    assert dev.lines[-1] == "stopped"
    await asyncio.sleep(0.5)
    assert processes_using(state) == []
    code, out, err = await command("decisions", "explain", "ada", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err.startswith("no database: set ORCHESTRATOR_DATABASE_URL")
    assert len(err.splitlines()) == 1

    # State survives a restart; and if `orchestrator dev` is killed outright, its
    # children go with it.
    again = Dev(state)
    await again.start(sink_port)
    await again.wait_for_line("ready; Ctrl-C stops everything")
    assert any("journey welcome_series" in line and "unchanged" in line for line in again.lines)
    async with httpx.AsyncClient(timeout=30) as http:
        mine = await http.get(
            f"http://127.0.0.1:{again.ports['api']}/v1/users/ada/journeys",
            headers={"authorization": f"Bearer {EXAMPLE_SERVER_KEY}"},
        )
    assert [j["journey_key"] for j in mine.json()] == ["welcome_series"]
    await again.stop(signal.SIGKILL)
    for _ in range(100):
        if not processes_using(state):
            break
        await asyncio.sleep(0.1)
    assert processes_using(state) == []


async def test_a_port_in_use_is_one_line_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        others = [str(free_port()) for _ in range(3)]
        code, out, err = await command(
            "dev", "--state-dir", str(tmp_path / "state"), "--api-port", str(port),
            "--temporal-port", others[0], "--ui-port", others[1], "--sink-port", others[2],
            cwd=tmp_path,
        )  # fmt: skip
    assert code == 1, err
    assert out.splitlines() == [
        f"port {port} is in use (another `make run`?): stop what holds it, or pass "
        f'--api-port with a free port (make run ARGS="--api-port ...")'
    ]
    assert not (tmp_path / "state").exists()  # nothing was started


KAFKA_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retail-kafka"


async def test_dev_with_the_kafka_example_runs_a_broker_and_consumes_its_topic(
    tmp_path: Path,
) -> None:
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    sink_port, kafka_port = free_port(), free_port()
    dev = Dev(tmp_path / ".state")
    await dev.start(sink_port, "--workspace", str(KAFKA_EXAMPLE), "--kafka-port", str(kafka_port))
    try:
        await dev.wait_for_line("ready; Ctrl-C stops everything")
        kafka_line = await dev.wait_for_line("  Kafka ")
        assert f"127.0.0.1:{kafka_port}" in kafka_line
        assert "consuming events; set aside: events-dead-letter" in kafka_line
        assert "publishing facts to facts" in kafka_line
        # Any Kafka client: records keyed by user, as /v1/batch takes them.
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{kafka_port}")
        await producer.start()
        try:
            for body in (
                b'{"type": "identify", "userId": "kay", "traits": {"email": "kay@example.com"}}',
                b'{"type": "track", "userId": "kay", "event": "Signed Up"}',
            ):
                await producer.send_and_wait("events", key=b"kay", value=body)
        finally:
            await producer.stop()
        line = await dev.wait_for_line("[sink] email")
        assert "→ kay" in line
        # ...and what happened is on the facts topic
        reader = AIOKafkaConsumer("facts", bootstrap_servers=f"127.0.0.1:{kafka_port}",
                                  auto_offset_reset="earliest", group_id="readers")  # fmt: skip
        await reader.start()
        kinds: set[str] = set()
        try:
            async with asyncio.timeout(30):
                while "message.sent" not in kinds:
                    for records in (await reader.getmany(timeout_ms=500)).values():
                        kinds |= {orjson.loads(r.value)["type"] for r in records}
        finally:
            await reader.stop()
        assert {"journey.entered", "decision.made", "message.sent"} <= kinds
    finally:
        code = await dev.stop(signal.SIGINT)
        assert code == 0, "\n".join(dev.lines[-30:])
    assert processes_using(tmp_path / ".state") == []
