"""One benchmark run: the floor, adnanh/webhook and the receiver, side by side.

Figures drift on shared machines, so the receiver is always reported beside the
floor (an ASGI app that reads the body and answers 200 on the same uvicorn) and
adnanh/webhook, measured in the same run, as ratios.
"""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from receiver.bench.load import (
    PATH,
    Load,
    builtin_load,
    callback_body,
    percentile,
    wrk_available,
    wrk_load,
)
from receiver.bench.servers import (
    Server,
    start_floor,
    start_receiver,
    start_webhook,
    webhook_path,
)
from receiver.store.sqlite import sqlite_path

__all__ = ["Figures", "Options", "Report", "run_bench"]

Generator = Literal["auto", "wrk", "builtin"]
_WARM_SECONDS = 1.0
_SOAK_CHUNK_SECONDS = 10.0


class Options(msgspec.Struct, kw_only=True):
    """What to run; see `receiver bench --help`."""

    concurrency: int = 50
    duration: float = 10.0
    generator: Generator = "auto"
    threads: int = 1
    url: str | None = None
    secret: str | None = None
    database_url: str | None = None
    floor: bool = True
    webhook: bool = True
    delivery: bool = True
    soak_callbacks: int = 0


class Figures(msgspec.Struct, kw_only=True):
    """Throughput and acknowledgement latency of one server under the same load."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    acknowledged: int
    errors: int


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


class Check(msgspec.Struct, kw_only=True):
    """Every acknowledged callback must be in the store; `missing` lists how many are not."""

    checked: bool
    acknowledged: int
    stored: int
    missing: int
    ok: bool


class Report(msgspec.Struct, kw_only=True):
    machine: dict[str, Any]
    options: Options
    generator: str
    floor: Figures | None
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
    check: Check


def _start_probe(session: _Session) -> bytes:
    """One signed callback, as the load sends them, for the start measurement.

    It is counted as sent and acknowledged, so the store check looks for it too.
    """
    prefix = session.prefix()
    task_id = prefix + "start"
    acked = Load(
        generator="start",
        seconds=0.0,
        requests=1,
        acknowledged=1,
        errors=0,
        requests_per_s=0.0,
        p50_ms=0.0,
        p99_ms=0.0,
        acked=[task_id],
    )
    session.sent.append((prefix, acked))
    body = callback_body(task_id)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"x-webhook-secret: {session.secret}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _figures(load: Load) -> Figures:
    return Figures(
        requests_per_s=round(load.requests_per_s, 1),
        p50_ms=round(load.p50_ms, 2),
        p99_ms=round(load.p99_ms, 2),
        requests=load.requests,
        acknowledged=load.acknowledged,
        errors=load.errors,
    )


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    found = {}
    for module in ("uvloop", "httptools"):
        try:
            __import__(module)
            found[module] = True
        except ImportError:
            found[module] = False
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **found,
    }


class _Session:
    """The state of one run: where files go, the secret, and every load sent to the receiver."""

    def __init__(self, options: Options, directory: Path):
        self.options = options
        self.directory = directory
        self.secret = options.secret or secrets.token_urlsafe(24)
        self.run_id = secrets.token_hex(4)
        self.use_wrk = options.generator == "wrk" or (
            options.generator == "auto" and wrk_available()
        )
        if options.generator == "wrk" and not wrk_available():
            raise RuntimeError("--generator wrk: wrk is not installed")
        self.sent: list[tuple[str, Load]] = []  # (task id prefix, load) sent to the receiver
        self._phases = 0

    def prefix(self) -> str:
        self._phases += 1
        return f"bench-{self.run_id}-{self._phases}-"

    def load(
        self, url: str, seconds: float, *, rate: float | None = None, builtin: bool = False
    ) -> tuple[str, Load]:
        prefix = self.prefix()
        concurrency = self.options.concurrency
        if self.use_wrk and rate is None and not builtin:
            result = wrk_load(
                url,
                self.secret,
                prefix,
                concurrency=concurrency,
                seconds=seconds,
                threads=self.options.threads,
            )
        else:
            result = asyncio.run(
                builtin_load(
                    url, self.secret, prefix, concurrency=concurrency, seconds=seconds, rate=rate
                )
            )
        return prefix, result

    def measure(self, server: Server) -> Figures:
        """Warm `server` up, then load it for the run's duration."""
        self.load(server.url, _WARM_SECONDS)
        return _figures(self.load(server.url, self.options.duration)[1])


def _with_rss(server: Server, work: Callable[[], Any]) -> tuple[Any, list[int]]:
    """Run `work` in a thread while sampling the server's RSS once a second."""
    samples: list[int] = []
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        samples.append(server.rss())
    if "error" in box:
        raise box["error"]
    return box["result"], samples


def _handled(path: Path) -> dict[str, float]:
    """task id -> when the benchmark handler started on it."""
    handled: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            task, _, at = line.partition(" ")
            if at:
                handled.setdefault(task, float(at))
    return handled


def _wait_handled(path: Path, count: int, timeout: float = 120.0) -> float:
    """Wait until `count` deliveries have started; return how long that took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if len(_handled(path)) >= count:
            break
        time.sleep(0.05)
    return time.perf_counter() - started


def _delivery(session: _Session, server: Server, handled: Path, peak: float) -> Delivery:
    rate = max(1.0, peak / 2)
    prefix, load = session.load(server.url, session.options.duration, rate=rate)
    session.sent.append((prefix, load))
    _wait_handled(handled, sum(item.acknowledged for _, item in session.sent), timeout=60)
    started = _handled(handled)
    delays = [
        max(0.0, (started[task] - acked_at) * 1000)
        for task, acked_at in zip(load.acked, load.acked_at, strict=True)
        if task in started
    ]
    return Delivery(
        rate_per_s=round(rate, 1),
        acknowledged=load.acknowledged,
        handled=len(delays),
        p50_ms=round(percentile(delays, 0.5), 2),
        p99_ms=round(percentile(delays, 0.99), 2),
        ack_p50_ms=round(load.p50_ms, 2),
        ack_p99_ms=round(load.p99_ms, 2),
    )


def _soak(session: _Session, server: Server) -> Soak:
    """Load in chunks until `soak_callbacks` were acknowledged, sampling RSS after each chunk."""
    target = session.options.soak_callbacks
    taken, samples = 0, []
    started = time.perf_counter()
    while taken < target:
        prefix, load = session.load(server.url, _SOAK_CHUNK_SECONDS)
        session.sent.append((prefix, load))
        taken += load.acknowledged
        samples.append(server.rss())
    mb = [sample / 2**20 for sample in samples]
    return Soak(
        callbacks=taken,
        seconds=round(time.perf_counter() - started, 1),
        rss_first_mb=round(mb[0], 1),
        rss_last_mb=round(mb[-1], 1),
        rss_max_mb=round(max(mb), 1),
        growth=round(mb[-1] / mb[0] - 1, 3) if mb[0] else 0.0,
    )


def _stored_task_ids(database_url: str, prefix: str) -> set[str]:
    """Task ids starting with `prefix` that have a stored event."""
    pattern = prefix + "%"
    query = (
        "SELECT DISTINCT j.task_id FROM jobs j JOIN events e ON e.job_id = j.id"
        " WHERE j.provider = 'apiframe' AND j.task_id LIKE "
    )
    if database_url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(database_url)) as db:
            return {row[0] for row in db.execute(query + "?", (pattern,))}

    async def fetch() -> set[str]:
        import asyncpg

        from receiver.store.postgres import pool_options

        connection = await asyncpg.connect(pool_options(database_url)[0])
        try:
            return {row[0] for row in await connection.fetch(query + "$1", pattern)}
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _check(session: _Session, database_url: str | None) -> Check:
    """Built-in loads are checked id by id; wrk reports only counts, checked per load."""
    acknowledged = sum(load.acknowledged for _, load in session.sent)
    if database_url is None:
        return Check(checked=False, acknowledged=acknowledged, stored=0, missing=0, ok=True)
    stored = missing = 0
    for prefix, load in session.sent:
        found = _stored_task_ids(database_url, prefix)
        stored += len(found)
        if load.acked:
            missing += len(set(load.acked) - found)
        else:
            missing += max(0, load.acknowledged - len(found))
    return Check(
        checked=True, acknowledged=acknowledged, stored=stored, missing=missing, ok=missing == 0
    )


def _db_bytes(database_url: str) -> int:
    """The database's size on disk; a SQLite file is checkpointed first so its WAL is counted."""
    if database_url.startswith("sqlite:"):
        path = sqlite_path(database_url)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    async def size() -> int:
        import asyncpg

        from receiver.store.postgres import pool_options

        connection = await asyncpg.connect(pool_options(database_url)[0])
        try:
            return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
        finally:
            await connection.close()

    return asyncio.run(size())


def _migrate(database_url: str, directory: Path) -> None:
    if database_url.startswith("sqlite:"):
        return
    env = {**os.environ, "RECEIVER_DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "receiver", "migrate"],
        env=env,
        cwd=directory,
        check=True,
        capture_output=True,
    )


def run_bench(options: Options, *, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Run the whole benchmark and return its report."""
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp:
        directory = Path(tmp)
        session = _Session(options, directory)
        floor = webhook = None
        if options.floor:
            progress("floor: a bare ASGI app on the same uvicorn")
            server = start_floor(directory)
            try:
                server.ready()
                floor = session.measure(server)
            finally:
                server.stop()
        if options.webhook and webhook_path():
            progress("adnanh/webhook")
            server = start_webhook(directory, session.secret)
            try:
                server.ready()
                webhook = session.measure(server)
            finally:
                server.stop()
        report = _run_receiver(session, directory, progress)
        ratios = {}
        if floor is not None and floor.requests_per_s:
            ratios["receiver_to_floor"] = round(
                report["receiver"].requests_per_s / floor.requests_per_s, 3
            )
        if webhook is not None and webhook.requests_per_s:
            ratios["receiver_to_webhook"] = round(
                report["receiver"].requests_per_s / webhook.requests_per_s, 3
            )
        return Report(
            machine=_machine(),
            options=options,
            generator="wrk" if session.use_wrk else "builtin",
            floor=floor,
            webhook=webhook,
            ratios=ratios,
            **report,
        )


def _run_receiver(
    session: _Session, directory: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    options = session.options
    database_url = options.database_url
    handled = directory / "handled.log"
    if options.url is not None:
        progress(f"receiver at {options.url}")
        warm = session.load(options.url, _WARM_SECONDS)
        session.sent.append(warm)
        peak = session.load(options.url, options.duration)
        session.sent.append(peak)
        return {
            "receiver": _figures(peak[1]),
            "start_to_callback_ms": None,
            "start_to_ready_ms": None,
            "rss_mb": None,
            "db_bytes_per_callback": None,
            "backlog_drain_s": None,
            "delivery": None,
            "soak": None,
            "check": _check(session, database_url),
        }
    database_url = database_url or f"sqlite:///{directory / 'bench.db'}"
    _migrate(database_url, directory)
    size_before = 0 if database_url.startswith("sqlite:") else _db_bytes(database_url)
    progress("receiver: start")
    # The load comes from one address, past the default per-client connection cap.
    per_client = {"RECEIVER_MAX_CONNECTIONS_PER_CLIENT": str(options.concurrency + 8)}
    server = start_receiver(
        directory,
        database_url=database_url,
        secret=session.secret,
        handled=handled,
        extra=per_client,
    )
    try:
        # A cold start is over when a provider's callback is acknowledged (committed);
        # the whole app, framework included, when its health check answers.
        start_to_callback = server.ready(probe=_start_probe(session))
        start_to_ready = server.ready()
        session.sent.append(session.load(server.url, _WARM_SECONDS))
        progress(f"receiver: {options.concurrency} connections for {options.duration:g}s")
        (prefix, peak), samples = _with_rss(
            server, lambda: session.load(server.url, options.duration)
        )
        session.sent.append((prefix, peak))
        rss = max(samples) if samples else server.rss()
        drain = _wait_handled(handled, sum(load.acknowledged for _, load in session.sent))
        delivery = None
        if options.delivery:
            progress(f"receiver: delivery latency at {peak.requests_per_s / 2:.0f}/s")
            delivery = _delivery(session, server, handled, peak.requests_per_s)
        soak = None
        if options.soak_callbacks > 0:
            progress(f"receiver: soak of {options.soak_callbacks} callbacks")
            soak = _soak(session, server)
    finally:
        server.stop()
    check = _check(session, database_url)
    size = _db_bytes(database_url) - size_before
    return {
        "receiver": _figures(peak),
        "start_to_callback_ms": round(start_to_callback, 1),
        "start_to_ready_ms": round(start_to_ready, 1),
        "rss_mb": round(rss / 2**20, 1),
        "db_bytes_per_callback": round(size / check.stored, 1) if check.stored else None,
        "backlog_drain_s": round(drain, 2),
        "delivery": delivery,
        "soak": soak,
        "check": check,
    }
