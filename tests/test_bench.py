"""`receiver bench` run as a real subprocess, briefly, with the built-in load generator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from receiver.bench.load import builtin_load, percentile
from receiver.bench.servers import start_floor


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


class TestBenchCommand:
    """A short run reports every figure and finds each acknowledged callback in the store."""

    async def test_json_report_has_every_figure_and_nothing_acknowledged_is_missing(
        self, tmp_path: Path
    ) -> None:
        """The JSON names throughput, latency, delivery, memory, size and start figures."""
        code, out, err = await run_bench(
            "--duration",
            "1",
            "--concurrency",
            "4",
            "--generator",
            "builtin",
            "--no-webhook",
            "--json",
            cwd=tmp_path,
        )
        assert 0 == code, err
        report = json.loads(out)
        assert "builtin" == report["generator"]
        assert {"requests_per_s", "p50_ms", "p99_ms", "requests", "acknowledged", "errors"} == set(
            report["receiver"]
        )
        assert set(report["receiver"]) == set(report["floor"])
        assert report["webhook"] is None
        assert report["receiver"]["acknowledged"] > 0
        assert {"receiver_to_floor"} == set(report["ratios"])
        for figure in (
            "start_to_callback_ms",
            "start_to_ready_ms",
            "rss_mb",
            "db_bytes_per_callback",
        ):
            assert report[figure] > 0, figure
        delivery = report["delivery"]
        assert delivery["acknowledged"] == delivery["handled"]
        assert {"p50_ms", "p99_ms", "rate_per_s"} <= set(delivery)
        check = report["check"]
        assert (True, True, 0) == (check["checked"], check["ok"], check["missing"])
        assert check["acknowledged"] == check["stored"]
        assert check["acknowledged"] >= report["receiver"]["acknowledged"]

    async def test_human_report_says_what_was_checked(self, tmp_path: Path) -> None:
        """Without --json the report is text ending with the store check's verdict."""
        code, out, err = await run_bench(
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--generator",
            "builtin",
            "--no-webhook",
            "--no-floor",
            "--no-delivery",
            cwd=tmp_path,
        )
        assert 0 == code, err
        assert "receiver" in out
        assert out.rstrip().splitlines()[-1].endswith("stored: OK")

    async def test_url_without_secret_is_a_usage_error(self, tmp_path: Path) -> None:
        """--url needs the receiver's secret, or every callback would be a 401."""
        code, _, err = await run_bench("--url", "http://127.0.0.1:9", cwd=tmp_path)
        assert 2 == code
        assert "--secret" in err


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
