"""Load generators: wrk with a generated Lua script, or a built-in one on raw asyncio streams.

Both send unique apiframe callbacks (`task_id` = prefix + a counter) with the static
secret, over keep-alive connections, and report throughput and latency percentiles.
The built-in one can send any route style (receiver.bench.routes) and keeps the key of
every acknowledged request and when its 2xx arrived, so the store can be checked key by
key and delivery latency measured; it can hold a rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from receiver.bench.routes import RequestMaker, callback_body, request_maker

__all__ = ["Load", "builtin_load", "callback_body", "percentile", "wrk_available", "wrk_load"]

PATH = "/hooks/apiframe"


class Load(msgspec.Struct, kw_only=True):
    """What one load run saw. `acked`, `acked_at` and `latencies_ms` (of every answer) are
    filled by the built-in generator only."""

    generator: str
    seconds: float
    requests: int
    acknowledged: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    acked: list[str] = msgspec.field(default_factory=list)
    acked_at: list[float] = msgspec.field(default_factory=list)
    latencies_ms: list[float] = msgspec.field(default_factory=list)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_LUA = """
local prefix = "%(prefix)s"
local headers = {["Content-Type"] = "application/json", ["x-webhook-secret"] = "%(secret)s"}
local next_thread = 0
local counter = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function request()
  counter = counter + 1
  local task = prefix .. tid .. "-" .. counter
  local body = '{"task_id":"' .. task .. '","task_type":"runway","status":"finished",'
    .. '"percentage":100,"video_url":"https://cdn.example/' .. task .. '.mp4"}'
  return wrk.format("POST", "%(path)s", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%%d,"duration_us":%%d,"status":%%d,"connect":%%d,"read":%%d,'
    .. '"write":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_load(
    url: str, secret: str, prefix: str, *, concurrency: int, seconds: float, threads: int = 1
) -> Load:
    """Run wrk against `url` and read the figures its `done` hook prints."""
    script = _LUA % {"prefix": prefix, "secret": secret, "path": PATH}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "callbacks.lua"
        path.write_text(script)
        completed = subprocess.run(
            [
                "wrk",
                f"-t{max(1, min(threads, concurrency))}",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(path),
                url.rstrip("/") + PATH,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {completed.stderr.strip() or completed.stdout.strip()}")
    figures = json.loads(lines[-1].removeprefix("BENCH "))
    duration = figures["duration_us"] / 1e6
    socket_errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    acknowledged = figures["requests"] - figures["status"]
    return Load(
        generator="wrk",
        seconds=duration,
        requests=figures["requests"],
        acknowledged=acknowledged,
        errors=figures["status"] + socket_errors,
        requests_per_s=acknowledged / duration if duration else 0.0,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )


class _Tally:
    def __init__(self, on_ack: Callable[[int], None] | None = None) -> None:
        self.on_ack = on_ack
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.acked: list[str] = []
        self.acked_at: list[float] = []


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _connection(
    host: str,
    port: int,
    make: RequestMaker,
    worker: int,
    deadline: float,
    interval: float | None,
    tally: _Tally,
) -> None:
    """One keep-alive connection sending requests in turn until `deadline` (perf_counter),
    or until `make` has none left for it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        n = 0
        start = time.perf_counter()
        while True:
            if interval is not None:
                due = start + n * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            if time.perf_counter() >= deadline:
                return
            n += 1
            made = make(worker, n)
            if made is None:
                return
            request, key = made
            writer.write(request)
            sent = time.perf_counter()
            tally.requests += 1
            try:
                status, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                tally.errors += 1
                close = True
                status = 0
            if status:
                tally.latencies.append(time.perf_counter() - sent)
            if 200 <= status < 300:
                tally.acked.append(key)
                tally.acked_at.append(time.time())
                if tally.on_ack is not None:
                    tally.on_ack(len(tally.acked))
            elif status:
                tally.errors += 1
            if close:
                writer.close()
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    return  # the server is gone
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def builtin_load(
    url: str,
    secret: str,
    prefix: str,
    *,
    concurrency: int,
    seconds: float,
    rate: float | None = None,
    on_ack: Callable[[int], None] | None = None,
    requests: RequestMaker | None = None,
) -> Load:
    """Send requests on `concurrency` connections for `seconds`, at `rate` per second if given.

    `requests` makes them (by default static-route callbacks, task ids from `prefix`).
    Each connection sends its next request only after the previous answer (closed loop);
    with a rate, connection k of C sends its n-th at start + n*C/rate (late ones go at once).
    `on_ack` is called with the running count as each 2xx arrives.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    make = requests or request_maker("static", prefix, secret, None)
    tally = _Tally(on_ack)
    interval = concurrency / rate if rate else None
    started = time.perf_counter()
    deadline = started + seconds
    workers = []
    for worker in range(concurrency):
        workers.append(
            asyncio.create_task(_connection(host, port, make, worker, deadline, interval, tally))
        )
        if interval is not None:
            await asyncio.sleep(interval / concurrency)  # spread the connections' turns
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    latencies_ms = [latency * 1000 for latency in tally.latencies]
    return Load(
        generator="builtin",
        seconds=elapsed,
        requests=tally.requests,
        acknowledged=len(tally.acked),
        errors=tally.errors,
        requests_per_s=len(tally.acked) / elapsed if elapsed else 0.0,
        p50_ms=percentile(latencies_ms, 0.50),
        p99_ms=percentile(latencies_ms, 0.99),
        acked=tally.acked,
        acked_at=tally.acked_at,
        latencies_ms=latencies_ms,
    )
