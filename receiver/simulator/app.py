"""The simulator's ASGI app: every provider under its own prefix, plus the /_sim controls."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State

from receiver.simulator import aivideoapi, apiframe, artvisum, control, rixapi, runway_ai
from receiver.simulator.config import SimConfig
from receiver.simulator.core import Simulator
from receiver.simulator.faults import StatusFaults

__all__ = ["PROVIDERS", "create_simulator"]

_ROUTERS = (apiframe.router, rixapi.router, aivideoapi.router, artvisum.router, runway_ai.router)
# The providers served, each under `/<name>`.
PROVIDERS = tuple(router.path.strip("/") for router in _ROUTERS)

# Room for artvisum's largest documented upload, so its own limit answers, not Litestar's.
_MAX_BODY = 128 * 1024 * 1024


def create_simulator(config: SimConfig | None = None) -> Litestar:
    """An ASGI app that serves each provider's API at `/<provider>`, as its document describes.

    `app.state.sim` is the live `SimConfig` (changed in place by `POST /_sim/config`) and
    `app.state.simulator` the `Simulator` that holds the tasks.
    """
    simulator = Simulator(config)
    return Litestar(
        route_handlers=[control.router, *_ROUTERS],
        state=State({"simulator": simulator, "sim": simulator.config}),
        lifespan=[simulator.lifespan],
        openapi_config=None,
        logging_config=None,
        request_max_body_size=_MAX_BODY,
        middleware=[
            lambda app: StatusFaults(
                app, simulator.config, simulator.status_calls, simulator.status_peak
            ),
        ],
    )
