"""`receiver bench` run as a real subprocess, briefly, with the built-in load generator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from receiver.bench.database import Sent, missing, provision
from receiver.bench.load import Load, builtin_load, percentile
from receiver.bench.routes import JOB_ROUTES, POST_ROUTES, ROUTES, request_maker, route_env
from receiver.bench.servers import start_floor, start_receiver


async def run_bench(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "bench",
        *args,
        cwd=cwd,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


ROUTE_ARGS = ("--duration", "1", "--concurrency", "4", "--generator", "builtin", "--no-webhook")


def _route(backend: dict[str, Any], name: str) -> dict[str, Any]:
    return next(run for run in backend["routes"] if run["route"] == name)


class TestBenchCommand:
    """A short run reports every figure and finds each acknowledged callback in the store."""

    async def test_json_report_has_every_route_and_nothing_acknowledged_is_missing(
        self, tmp_path: Path
    ) -> None:
        """Each route style beside the floor before and after, its ratios, its bytes per
        callback, the targets, and the store check of every acknowledged request."""
        code, out, err = await run_bench(*ROUTE_ARGS, "--json", cwd=tmp_path)
        assert 0 == code, err
        report = json.loads(out)
        assert "builtin" == report["generator"]
        figures = {"requests_per_s", "p50_ms", "p99_ms", "requests", "acknowledged", "errors"}
        assert figures == set(report["receiver"])
        assert figures == set(report["floor"]) == set(report["floor_after"])
        assert report["webhook"] is None
        (backend,) = report["backends"]
        assert "sqlite" == backend["database"]
        assert list(ROUTES) == [run["route"] for run in backend["routes"]]
        for run in backend["routes"]:
            name = run["route"]
            assert run["figures"]["acknowledged"] > 0, name
            assert 0 == run["figures"]["errors"], name
            assert run["to_floor"] > 0, name
            assert run["bytes_per_callback"] > 0, name
            if name in ("static", "nudge"):
                assert run["to_static"] is None, name
            else:
                assert run["to_static"] > 0, name
        static = _route(backend, "static")
        assert report["receiver"] == static["figures"]
        assert backend["bytes_per_callback"] == report["db_bytes_per_callback"]
        assert backend["two_processes"] is None  # PostgreSQL only
        assert {"receiver_to_floor": static["to_floor"]} == report["ratios"]
        for figure in ("start_to_callback_ms", "start_to_ready_ms", "rss_mb"):
            assert report[figure] > 0, figure
        delivery = report["delivery"]
        assert delivery["acknowledged"] == delivery["handled"]
        assert {"p50_ms", "p99_ms", "rate_per_s"} <= set(delivery)
        targets = {target["name"]: target for target in report["targets"]}
        assert {
            "sqlite static route / floor",
            "sqlite token route / static route",
            "sqlite rixapi route / static route",
            "sqlite signed route / static route",
            "sqlite bytes per stored callback (static route)",
            "acknowledged callbacks missing from the store",
        } == set(targets)
        assert static["to_floor"] == targets["sqlite static route / floor"]["value"]
        assert (0, True) == (
            targets["acknowledged callbacks missing from the store"]["value"],
            targets["acknowledged callbacks missing from the store"]["ok"],
        )
        check = report["check"]
        assert (True, True, 0) == (check["checked"], check["ok"], check["missing"])
        assert check["acknowledged"] == check["stored"]
        sent = sum(run["figures"]["acknowledged"] for run in backend["routes"])
        assert check["acknowledged"] > sent  # the warm-ups and the delivery load too

    async def test_human_report_says_what_was_checked(self, tmp_path: Path) -> None:
        """Without --json the report is text: each route, the targets, and last the store check."""
        code, out, err = await run_bench(
            *ROUTE_ARGS, "--routes", "static,rixapi", "--no-floor", "--no-delivery", cwd=tmp_path
        )
        assert 0 == code, err
        assert "POST /hooks/rixapi/{token}" in out
        assert "[pass] acknowledged callbacks missing from the store" in out
        assert out.rstrip().splitlines()[-1].endswith("stored: OK")

    async def test_a_missing_callback_fails_the_run(self, tmp_path: Path) -> None:
        """The floor acknowledges callbacks without storing them: every one is missing, exit 3."""
        server = start_floor(tmp_path)
        try:
            await asyncio.to_thread(server.ready)
            code, out, err = await run_bench(
                *ROUTE_ARGS,
                "--url",
                server.url,
                "--secret",
                "bench-secret",
                "--database-url",
                f"sqlite:///{tmp_path / 'empty.db'}",
                "--no-floor",
                "--no-delivery",
                cwd=tmp_path,
            )
        finally:
            server.stop()
        assert 3 == code, err
        assert "[FAIL] acknowledged callbacks missing from the store" in out
        assert out.rstrip().endswith("MISSING")

    async def test_postgres_beside_sqlite_and_two_processes(
        self, tmp_path: Path, pg_url: str
    ) -> None:
        """--compare-postgres runs the routes on both backends in one run, with the ratio of
        the two, each one's bytes per callback, and two receivers on PostgreSQL."""
        code, out, err = await run_bench(
            *ROUTE_ARGS,
            "--routes",
            "static,token",
            "--compare-postgres",
            pg_url,
            "--no-floor",
            "--no-delivery",
            "--json",
            cwd=tmp_path,
        )
        assert 0 == code, err
        report = json.loads(out)
        sqlite, postgres = report["backends"]
        assert ("sqlite", "postgresql") == (sqlite["database"], postgres["database"])
        assert ["static", "token"] == [run["route"] for run in postgres["routes"]]
        assert postgres["bytes_per_callback"] > 0 and sqlite["bytes_per_callback"] > 0
        assert postgres["two_processes"]["acknowledged"] > 0
        ratio = (
            _route(postgres, "static")["figures"]["requests_per_s"]
            / _route(sqlite, "static")["figures"]["requests_per_s"]
        )
        assert round(ratio, 3) == report["ratios"]["postgres_to_sqlite"]
        names = {target["name"] for target in report["targets"]}
        assert {
            "postgresql / sqlite, static route",
            "postgresql token route / static route",
            "postgresql bytes per stored callback (static route)",
        } <= names
        assert (True, 0) == (report["check"]["ok"], report["check"]["missing"])
        assert postgres["check"]["stored"] == postgres["check"]["acknowledged"] > 0

    async def test_url_without_secret_is_a_usage_error(self, tmp_path: Path) -> None:
        """--url needs the receiver's secret, or every callback would be a 401."""
        code, _, err = await run_bench("--url", "http://127.0.0.1:9", cwd=tmp_path)
        assert 2 == code
        assert "--secret" in err

    async def test_wrk_with_other_routes_is_a_usage_error(self, tmp_path: Path) -> None:
        """wrk sends only static-route callbacks, so it is refused for the other routes."""
        code, _, err = await run_bench("--generator", "wrk", cwd=tmp_path)
        assert 2 == code
        assert "--routes static" in err


class TestStoreCheck:
    """The check finds every acknowledged request of each route style in the store, through
    the Store's reads, and counts one that is not there as missing."""

    def test_each_route_style_is_found_key_by_key(self, tmp_path: Path) -> None:
        """Real loads on a real receiver are all found; a key for a request never sent, to a
        real job, is missing, for every route style."""
        database = f"sqlite:///{tmp_path / 'bench.db'}"
        secret = "bench-secret-for-the-check"
        names = iter(f"check-{n}-" for n in range(100))
        pools = provision(database, JOB_ROUTES, lambda: next(names), concurrency=2, seconds=(1, 1))
        sent = []
        for routes, nudges in ((POST_ROUTES, False), (("nudge",), True)):
            server = start_receiver(
                tmp_path,
                database_url=database,
                secret=secret,
                handled=tmp_path / "handled.log",
                extra=route_env(secret, nudges=nudges),
            )
            try:
                server.ready()
                for route in routes:
                    prefix = next(names)
                    maker = request_maker(route, prefix, secret, pools.get((route, 0)))
                    load = asyncio.run(
                        builtin_load(
                            server.url, secret, prefix, concurrency=2, seconds=0.3, requests=maker
                        )
                    )
                    sent.append(Sent(route=route, prefix=prefix, database_url=database, load=load))
            finally:
                server.stop()
        assert all(item.load.acknowledged > 0 for item in sent)
        assert 0 == sum(item.load.errors for item in sent)
        acknowledged = sum(item.load.acknowledged for item in sent)
        assert (acknowledged, 0) == missing(database, sent)
        unused = {route: pools[route, 1].jobs[0][0][0] for route in JOB_ROUTES}
        never_sent = {
            "static": "check-never-sent",
            "signed": "check-never-sent",
            "token": f"{unused['token']} 0.0001",
            "rixapi": f"{unused['rixapi']} 0.0001",
            "nudge": unused["nudge"],
        }
        for route, key in never_sent.items():
            forged = Load(
                generator="forged",
                seconds=1.0,
                requests=1,
                acknowledged=1,
                errors=0,
                requests_per_s=1.0,
                p50_ms=0.0,
                p99_ms=0.0,
                acked=[key],
            )
            item = Sent(route=route, prefix="check-", database_url=database, load=forged)
            assert (0, 1) == missing(database, [item]), route


class TestBuiltinLoad:
    """The built-in generator counts answers, keeps acknowledged ids, and can hold a rate."""

    async def test_floor_acknowledges_every_request_at_about_the_rate(self, tmp_path: Path) -> None:
        """At 50/s for 1 s on 2 connections, at most 50 (+1 per connection) are sent, all 200."""
        server = start_floor(tmp_path)
        try:
            await asyncio.to_thread(server.ready)
            load = await builtin_load(
                server.url, "secret", "t-", concurrency=2, seconds=1.0, rate=50
            )
        finally:
            server.stop()
        assert load.requests == load.acknowledged
        assert 0 == load.errors
        assert 0 < load.requests <= 52
        assert len(set(load.acked)) == load.acknowledged


class TestPercentile:
    """Nearest-rank percentiles."""

    def test_nearest_rank(self) -> None:
        """p50 of 1..100 is 50, p99 is 99, and nothing gives 0."""
        values = [float(n) for n in range(100, 0, -1)]
        assert (50.0, 99.0, 0.0) == (
            percentile(values, 0.5),
            percentile(values, 0.99),
            percentile([], 0.5),
        )
