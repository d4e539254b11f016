"""The ratios of a run and the targets issue 14 sets for them, reported and never asserted.

A route's rate is divided by the mean of the floor measured before and after the
receiver, and a POST route's by the static route's on the same database in the same run.
Only the store check fails a run; a missed target is printed as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from receiver.bench.results import Backend, Check, Figures, RouteRun, Target

__all__ = ["ratios", "targets"]

STATIC_TO_FLOOR = 0.15
ROUTE_TO_STATIC = 0.8
POSTGRES_TO_SQLITE = 0.5
POSTGRES_P99_MS = 100.0
P99_CONNECTIONS = 50
MAX_BYTES = {"sqlite": 1000.0, "postgresql": 1500.0}


def _ratio(rate: float, base: float | None) -> float | None:
    return round(rate / base, 3) if base else None


def _route(backend: Backend, name: str) -> RouteRun | None:
    return next((run for run in backend.routes if run.route == name), None)


def ratios(backends: Sequence[Backend], floors: Sequence[Figures]) -> list[Backend]:
    """The backends with each route's ratio to the floors' mean and to its static route."""
    floor = sum(f.requests_per_s for f in floors) / len(floors) if floors else None
    done = []
    for backend in backends:
        static = _route(backend, "static")
        base = static.figures.requests_per_s if static else None
        runs = [
            msgspec.structs.replace(
                run,
                to_floor=_ratio(run.figures.requests_per_s, floor),
                to_static=_ratio(run.figures.requests_per_s, base)
                if run.route not in ("static", "nudge")
                else None,
            )
            for run in backend.routes
        ]
        done.append(msgspec.structs.replace(backend, routes=runs))
    return done


def _at_least(name: str, value: float | None, least: float) -> Target:
    ok = None if value is None else value >= least
    return Target(name=name, want=f">= {least:g}", value=value, ok=ok)


def _at_most(name: str, value: float | None, most: float) -> Target:
    ok = None if value is None else value <= most
    return Target(name=name, want=f"<= {most:g}", value=value, ok=ok)


def targets(backends: Sequence[Backend], concurrency: int, check: Check) -> list[Target]:
    """Each target with its value from this run; `ok` is None when the run did not measure it."""
    found: list[Target] = []
    by_name = {backend.database: backend for backend in backends}
    sqlite, postgres = by_name.get("sqlite"), by_name.get("postgresql")
    if sqlite is not None and (static := _route(sqlite, "static")) is not None:
        found.append(_at_least("sqlite static route / floor", static.to_floor, STATIC_TO_FLOOR))
    for backend in backends:
        for run in backend.routes:
            if run.route not in ("static", "nudge"):
                name = f"{backend.database} {run.route} route / static route"
                found.append(_at_least(name, run.to_static, ROUTE_TO_STATIC))
    if postgres is not None and (pg_static := _route(postgres, "static")) is not None:
        lite = _route(sqlite, "static") if sqlite is not None else None
        value = _ratio(
            pg_static.figures.requests_per_s, lite.figures.requests_per_s if lite else None
        )
        found.append(_at_least("postgresql / sqlite, static route", value, POSTGRES_TO_SQLITE))
        p99 = _at_most(
            f"postgresql static p99 ms at {concurrency} connections (target at {P99_CONNECTIONS})",
            pg_static.figures.p99_ms,
            POSTGRES_P99_MS,
        )
        found.append(
            p99 if concurrency == P99_CONNECTIONS else msgspec.structs.replace(p99, ok=None)
        )
    for backend in backends:
        if backend.database in MAX_BYTES:
            name = f"{backend.database} bytes per stored callback (static route)"
            found.append(_at_most(name, backend.bytes_per_callback, MAX_BYTES[backend.database]))
    stored = Target(
        name="acknowledged callbacks missing from the store",
        want="0",
        value=float(check.missing) if check.checked else None,
        ok=check.ok if check.checked else None,
    )
    return [*found, stored]
