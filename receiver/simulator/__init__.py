"""A provider simulator: the five providers' APIs over real HTTP, for tests and a local sandbox."""

from __future__ import annotations

from receiver.simulator.app import PROVIDERS, create_simulator
from receiver.simulator.config import SimConfig, update_config
from receiver.simulator.core import CallbackInfo, Phase, Simulator, TaskInfo
from receiver.simulator.server import RunningSimulator, run_simulator

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
