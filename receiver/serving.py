"""Running an ASGI app on uvicorn inside the current event loop (tests, sandbox, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import uvicorn

__all__ = ["GracefulServer", "bind", "serve_in_loop"]


class GracefulServer(uvicorn.Server):
    """uvicorn that calls `on_started` once it listens, `on_shutdown` as its shutdown
    begins (SIGTERM, SIGINT).

    uvicorn then closes the listening socket, lets in-flight requests finish within its
    `timeout_graceful_shutdown`, and runs the app's lifespan shutdown.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_shutdown: Sequence[Callable[[], None]] = (),
        on_started: Sequence[Callable[[], None]] = (),
    ):
        super().__init__(config)
        self.on_shutdown = list(on_shutdown)
        self.on_started = list(on_started)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the app started and the sockets listen
            for callback in self.on_started:
                callback()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for callback in self.on_shutdown:
            callback()
        await super().shutdown(sockets)


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket; `port=0` picks a free port (read it with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve_in_loop(
    app: Any, *, sock: socket.socket | None = None, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL."""
    sock = sock or bind()
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,  # leave the host's logging alone
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # RECEIVER_TRUSTED_PROXIES alone decides (receiver.ratelimit)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
