"""A provider simulator: the five providers' APIs over real HTTP, for tests and a local sandbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.lazy import lazy_exports

if TYPE_CHECKING:
    from receiver.simulator.app import PROVIDERS, create_simulator
    from receiver.simulator.config import SimConfig, update_config
    from receiver.simulator.core import CallbackInfo, Simulator, TaskInfo
    from receiver.simulator.phase import Phase
    from receiver.simulator.server import RunningSimulator, run_simulator

# Imported on first use: the CLI reads `core` without loading the web framework.
__getattr__ = lazy_exports(
    __name__,
    {
        "PROVIDERS": "receiver.simulator.app",
        "create_simulator": "receiver.simulator.app",
        "SimConfig": "receiver.simulator.config",
        "update_config": "receiver.simulator.config",
        "CallbackInfo": "receiver.simulator.core",
        "Phase": "receiver.simulator.phase",
        "Simulator": "receiver.simulator.core",
        "TaskInfo": "receiver.simulator.core",
        "RunningSimulator": "receiver.simulator.server",
        "run_simulator": "receiver.simulator.server",
    },
)

__all__ = [
    "PROVIDERS",
    "CallbackInfo",
    "Phase",
    "RunningSimulator",
    "SimConfig",
    "Simulator",
    "TaskInfo",
    "create_simulator",
    "run_simulator",
    "update_config",
]
