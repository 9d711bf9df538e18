"""Serving an ASGI app with uvicorn inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from orchestrator.logs.formats import uvicorn_log_config


class _Server(uvicorn.Server):
    """Leaves signals alone: the process that embeds the server decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; forked API processes can share it."""
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted connections of
    # sockets that say so, and Nagle's algorithm would add delayed-ACK stalls.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@asynccontextmanager
async def serving(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    sock: socket.socket | None = None,
    forwarded_allow_ips: str = "127.0.0.1",
) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields its base URL (port 0 picks a free one).

    With `sock`, serve on that already-listening socket instead of binding. Requests from
    `forwarded_allow_ips` (the load balancer) are taken to come from the client their
    X-Forwarded-For names: per-client rate limits count that client.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
        proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips,
        log_config=uvicorn_log_config(),
    )  # fmt: skip
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock] if sock else None))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
                raise RuntimeError(f"could not serve on {host}:{port}")
            await asyncio.sleep(0.01)
        bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
