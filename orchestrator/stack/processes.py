"""Child-process helpers: free loopback ports and children that die with their parent."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bind_to_parent() -> None:
    """Run in the child before exec: on Linux, get SIGTERM when the parent dies.

    Ctrl-C reaches the whole process group anyway; this covers a parent that is
    killed outright, so no postgres or temporal process outlives `orchestrator dev`.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_child(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGINT (a graceful stop for postgres and temporal alike), then SIGKILL if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
