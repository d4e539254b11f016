"""Run the simulator on a free port inside the current event loop, for tests and the sandbox."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar

from receiver.serving import bind, serve_in_loop
from receiver.simulator.app import PROVIDERS, create_simulator
from receiver.simulator.config import SimConfig
from receiver.simulator.core import Simulator, TaskInfo

__all__ = ["RunningSimulator", "run_simulator"]


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

    def status_calls(self, provider: str) -> int:
        """How many times `provider`'s status API has been called."""
        return self.simulator.status_calls[provider]

    def create_calls(self, provider: str) -> int:
        """How many create calls `provider` has had, refused ones included."""
        return self.simulator.create_calls[provider]

    def status_peak(self, provider: str) -> int:
        """The most status calls of `provider` that were in flight at once."""
        return self.simulator.status_peak[provider]

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
    async with serve_in_loop(app, sock=bind(host, port)) as url:
        yield RunningSimulator(url, app)
