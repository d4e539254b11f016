"""What a benchmark run is asked to do and what it found: the values `--json` prints."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from receiver.bench.routes import ROUTES

__all__ = [
    "Backend",
    "Check",
    "Delivery",
    "Figures",
    "Generator",
    "Options",
    "Report",
    "RouteRun",
    "Soak",
    "Target",
]

Generator = Literal["auto", "wrk", "builtin"]


class Options(msgspec.Struct, kw_only=True):
    """What to run; see `receiver bench --help`."""

    concurrency: int = 50
    duration: float = 5.0
    generator: Generator = "auto"
    threads: int = 1
    url: str | None = None
    secret: str | None = None
    database_url: str | None = None
    floor: bool = True
    webhook: bool = True
    delivery: bool = True
    soak_callbacks: int = 0
    routes: tuple[str, ...] = ROUTES
    # A PostgreSQL database to run the same routes on after the main backend, in one run.
    compare_postgres: str | None = None


class Figures(msgspec.Struct, kw_only=True):
    """Throughput and acknowledgement latency of one server under the same load."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    acknowledged: int
    errors: int


class RouteRun(msgspec.Struct, kw_only=True):
    """One route style under load, with its ratios to the run's floor and static route."""

    route: str
    request: str
    figures: Figures
    to_floor: float | None
    to_static: float | None
    # Growth of the database over this route's loads, per acknowledged request.
    bytes_per_callback: float | None


class Check(msgspec.Struct, kw_only=True):
    """Every acknowledged callback must be in the store; `missing` lists how many are not."""

    checked: bool
    acknowledged: int
    stored: int
    missing: int
    ok: bool


class Backend(msgspec.Struct, kw_only=True):
    """Every route on one database; `two_processes` is the static route on two receivers."""

    database: str
    routes: list[RouteRun]
    bytes_per_callback: float | None
    two_processes: Figures | None
    check: Check


class Target(msgspec.Struct, kw_only=True):
    """A figure the issue asks for, reported beside its value; `ok` None when not measured."""

    name: str
    want: str
    value: float | None
    ok: bool | None


class Delivery(msgspec.Struct, kw_only=True):
    """Acknowledgement to handler start, at a fixed rate of fresh callbacks."""

    rate_per_s: float
    acknowledged: int
    handled: int
    p50_ms: float
    p99_ms: float
    ack_p50_ms: float
    ack_p99_ms: float


class Soak(msgspec.Struct, kw_only=True):
    """Resident memory while `callbacks` were taken, sampled after each chunk of load."""

    callbacks: int
    seconds: float
    rss_first_mb: float
    rss_last_mb: float
    rss_max_mb: float
    growth: float


class Report(msgspec.Struct, kw_only=True):
    """The whole run. `receiver`, `db_bytes_per_callback` and `check` are the main backend's
    static route (as before the route styles were added), `check` covering every load."""

    machine: dict[str, Any]
    options: Options
    generator: str
    floor: Figures | None
    floor_after: Figures | None
    webhook: Figures | None
    receiver: Figures
    start_to_callback_ms: float | None
    start_to_ready_ms: float | None
    rss_mb: float | None
    db_bytes_per_callback: float | None
    backlog_drain_s: float | None
    delivery: Delivery | None
    soak: Soak | None
    ratios: dict[str, float]
    backends: list[Backend]
    targets: list[Target]
    check: Check
