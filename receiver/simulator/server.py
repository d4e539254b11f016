"""Run the simulator (or any ASGI app) on a free port inside the current event loop, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from litestar import Litestar

from receiver.simulator.app import PROVIDERS, create_simulator
from receiver.simulator.config import SimConfig
from receiver.simulator.core import Simulator, TaskInfo

__all__ = ["RunningSimulator", "run_simulator", "serve"]


def _bind(host: str, port: int) -> socket.socket:
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
async def serve(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn until the block ends; yields its base URL.

    Port 0 picks a free port. Uvicorn leaves logging alone (no `log_config`) and runs the
    app's lifespan, so the app's shutdown runs when the block ends.
    """
    sock = _bind(host, port)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises why uvicorn stopped
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


class RunningSimulator:
    """A simulator being served: its URL, its live config and its tasks."""

    def __init__(self, url: str, app: Litestar):
        self.url = url
        self.app = app
        self.simulator: Simulator = app.state.simulator

    @property
    def config(self) -> SimConfig:
        """The live config; changing a field affects tasks created afterwards."""
        return self.simulator.config

    def base_url(self, provider: str) -> str:
        """The base URL to configure for `provider`, e.g. `http://127.0.0.1:PORT/rixapi`."""
        if provider not in PROVIDERS:
            raise ValueError(f"the simulator has no provider {provider!r}")
        return f"{self.url}/{provider}"

    def tasks(self) -> list[TaskInfo]:
        """Every task so far, oldest first, with the callbacks sent and their answers."""
        return self.simulator.tasks()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every task has ended and sent its last callback."""
        await self.simulator.wait_idle(timeout)

    async def reset(self, config: SimConfig | None = None) -> None:
        """Forget every task (cancelling running ones) and set the config back, in place."""
        await self.simulator.reset(config)


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Start the simulator with uvicorn in the current event loop; stop it when the block ends."""
    app = create_simulator(config)
    async with serve(app, host, port) as url:
        yield RunningSimulator(url, app)
