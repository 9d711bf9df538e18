"""What a process serves as its metrics, and where.

The API serves `GET /metrics` on its own port (see `api.py`). The other processes
(worker, consumer, relay) serve it on ORCHESTRATOR_METRICS_PORT from a thread, so a
scrape is answered even while the event loop is busy.

Several API processes share one listening socket (ORCHESTRATOR_API_PROCESSES > 1), so a
scrape of the port reaches any one of them: they run in prometheus-client's
multiprocess mode, each writing its values to files in one directory, and whichever
process answers `/metrics` adds them all up. Per-process ports were the alternative,
but then a scrape of the shared port would jump between processes' counters, and
Prometheus would need a target per process. The mode must be chosen before the first
value exists; `shared_by_processes` switches it in the parent, before it forks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricsUnavailable(Exception):
    """The metrics port cannot be served (in use, or not an address of this host)."""


def registry() -> CollectorRegistry:
    """This process's metrics, or in multiprocess mode every API process's."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return REGISTRY
    shared = CollectorRegistry()
    MultiProcessCollector(shared, path=directory)  # type: ignore[no-untyped-call]
    return shared


def latest() -> bytes:
    """The metrics in Prometheus's text format."""
    return generate_latest(registry())


@contextmanager
def shared_by_processes() -> Iterator[Callable[[int], None]]:
    """Multiprocess mode for the forked API processes, in PROMETHEUS_MULTIPROC_DIR if
    set (emptied first: old files would add old counts) or else a temporary directory
    removed at the end. Yields what to call with the pid of a process that ended."""
    given = os.environ.get(MULTIPROCESS_DIR)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="orchestrator-metrics-"))
    if given:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.db"):
            old.unlink()
    recorded = [m.name for m in REGISTRY.collect() if m.name.startswith("orchestrator_")
                and m.samples]  # fmt: skip
    if recorded:  # their values live in this process's memory, not in the files
        raise RuntimeError(f"metrics recorded before multiprocess mode: {recorded}")
    os.environ[MULTIPROCESS_DIR] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    try:
        yield lambda pid: mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def serving_metrics(host: str, port: int) -> Iterator[str | None]:
    """Serve this process's metrics on host:port from a thread until the block exits;
    yields the URL (None with port 0: metrics are off)."""
    if not port:
        yield None
        return
    try:
        server, thread = start_http_server(port, addr=host, registry=registry())
    except OSError as exc:
        raise MetricsUnavailable(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (set "
            "ORCHESTRATOR_METRICS_PORT to a free port, or 0 for no metrics)"
        ) from None
    try:
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
