"""One benchmark run: the floor, adnanh/webhook and the receiver's every route, side by side.

Figures drift on shared machines, so each route is reported beside the floor (an ASGI
app that reads the body and answers 200 on the same uvicorn, measured before and after
the receiver in the same run) and beside the static route, as ratios.
"""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from receiver.bench.database import Sent, db_bytes, migrate, missing, provision
from receiver.bench.load import Load, builtin_load, percentile, wrk_available, wrk_load
from receiver.bench.results import (
    Backend,
    Check,
    Delivery,
    Figures,
    Options,
    Report,
    RouteRun,
    Soak,
)
from receiver.bench.routes import (
    DESCRIPTIONS,
    JOB_ROUTES,
    POST_ROUTES,
    JobPool,
    callback_body,
    http_request,
    request_maker,
    route_env,
)
from receiver.bench.servers import (
    Server,
    start_floor,
    start_receiver,
    start_webhook,
    webhook_path,
)
from receiver.bench.targets import ratios, targets

__all__ = ["Figures", "Options", "Report", "run_bench"]

_WARM_SECONDS = 1.0
_SOAK_CHUNK_SECONDS = 10.0
_SETTLE_SECONDS = 0.3  # after handlers started: their outcomes are written, then size is read


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
    """The state of one run: where files go, the secret, and every load sent to a receiver."""

    def __init__(self, options: Options, directory: Path):
        self.options = options
        self.directory = directory
        self.secret = options.secret or secrets.token_urlsafe(24)
        self.run_id = secrets.token_hex(4)
        # wrk sends only the static route's callbacks: a run of other routes is built-in.
        self.use_wrk = options.generator == "wrk" or (
            options.generator == "auto" and wrk_available() and set(options.routes) <= {"static"}
        )
        if options.generator == "wrk" and not wrk_available():
            raise RuntimeError("--generator wrk: wrk is not installed")
        self.sent: list[Sent] = []
        self._phases = 0

    def prefix(self) -> str:
        self._phases += 1
        return f"bench-{self.run_id}-{self._phases}-"

    def _load(
        self,
        url: str,
        seconds: float,
        *,
        route: str = "static",
        pool: JobPool | None = None,
        rate: float | None = None,
        concurrency: int | None = None,
    ) -> tuple[str, Load]:
        prefix = self.prefix()
        concurrency = concurrency or self.options.concurrency
        if self.use_wrk and rate is None and route == "static":
            result = wrk_load(
                url,
                self.secret,
                prefix,
                concurrency=concurrency,
                seconds=seconds,
                threads=self.options.threads,
            )
        else:
            requests = request_maker(route, prefix, self.secret, pool)
            result = asyncio.run(
                builtin_load(
                    url,
                    self.secret,
                    prefix,
                    concurrency=concurrency,
                    seconds=seconds,
                    rate=rate,
                    requests=requests,
                )
            )
        return prefix, result

    def send(
        self,
        url: str,
        seconds: float,
        *,
        database_url: str | None,
        route: str = "static",
        pool: JobPool | None = None,
        rate: float | None = None,
        concurrency: int | None = None,
    ) -> Load:
        """Load a receiver and remember what it acknowledged, for the store check."""
        prefix, load = self._load(
            url, seconds, route=route, pool=pool, rate=rate, concurrency=concurrency
        )
        self.sent.append(Sent(route=route, prefix=prefix, database_url=database_url, load=load))
        return load

    def measure(self, server: Server) -> Figures:
        """Warm a server that stores nothing up, then load it for the run's duration."""
        self._load(server.url, _WARM_SECONDS)
        return _figures(self._load(server.url, self.options.duration)[1])

    def posted(self, database_url: str) -> int:
        """Callbacks acknowledged by the receivers on `database_url` with handlers to run."""
        return sum(
            s.load.acknowledged
            for s in self.sent
            if s.database_url == database_url and s.route in POST_ROUTES
        )


def _start_probe(session: _Session, database_url: str | None) -> bytes:
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
    session.sent.append(Sent(route="static", prefix=prefix, database_url=database_url, load=acked))
    headers = {"Content-Type": "application/json", "x-webhook-secret": session.secret}
    return http_request("POST", "/hooks/apiframe", headers, callback_body(task_id))


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


def _in_parallel(*works: Callable[[], Load]) -> list[Load]:
    """Run loads at the same time, each in its own thread (and event loop)."""
    results: list[Load | BaseException] = [RuntimeError("not run")] * len(works)

    def run(index: int) -> None:
        try:
            results[index] = works[index]()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if isinstance(result, Load)]


def _handled(path: Path) -> tuple[dict[str, float], int]:
    """task id -> when the benchmark handler first started on it; and how many events started."""
    handled: dict[str, float] = {}
    events = set()
    if path.exists():
        for line in path.read_text().splitlines():
            task, _, rest = line.partition(" ")
            at, _, event = rest.partition(" ")
            if at:
                handled.setdefault(task, float(at))
                events.add(event or line)
    return handled, len(events)


def _wait_handled(path: Path, count: int, timeout: float = 120.0) -> float:
    """Wait until `count` deliveries have started; return how long that took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if _handled(path)[1] >= count:
            break
        time.sleep(0.05)
    return time.perf_counter() - started


def _delivery(
    session: _Session, server: Server, handled: Path, database_url: str, peak: float
) -> Delivery:
    rate = max(1.0, peak / 2)
    load = session.send(server.url, session.options.duration, database_url=database_url, rate=rate)
    _wait_handled(handled, session.posted(database_url), timeout=60)
    started = _handled(handled)[0]
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


def _soak(session: _Session, server: Server, database_url: str) -> Soak:
    """Load in chunks until `soak_callbacks` were acknowledged, sampling RSS after each chunk."""
    target = session.options.soak_callbacks
    taken, samples = 0, []
    started = time.perf_counter()
    while taken < target:
        load = session.send(server.url, _SOAK_CHUNK_SECONDS, database_url=database_url)
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


def _check(session: _Session, database_url: str | None) -> Check:
    """Every acknowledged request of the loads on `database_url`, found in its store."""
    sent = [s for s in session.sent if s.database_url == database_url]
    acknowledged = sum(s.load.acknowledged for s in sent)
    if database_url is None:
        return Check(checked=False, acknowledged=acknowledged, stored=0, missing=0, ok=True)
    stored, lost = missing(database_url, sent)
    return Check(checked=True, acknowledged=acknowledged, stored=stored, missing=lost, ok=lost == 0)


class _Phase:
    """The growth of the database over a route's loads, per acknowledged request."""

    def __init__(self, session: _Session, database_url: str):
        self.session = session
        self.database_url = database_url
        self.size = db_bytes(database_url)
        self.count = len(session.sent)

    def bytes_per_callback(self, handled: Path | None) -> float | None:
        if handled is not None:
            _wait_handled(handled, self.session.posted(self.database_url))
            time.sleep(_SETTLE_SECONDS)
        size, count = db_bytes(self.database_url), len(self.session.sent)
        acknowledged = sum(s.load.acknowledged for s in self.session.sent[self.count : count])
        grown = size - self.size
        self.size, self.count = size, count
        return round(grown / acknowledged, 1) if acknowledged else None


class _Receiver:
    """Runs every route on one database and gathers its figures."""

    def __init__(self, session: _Session, database_url: str, progress: Callable[[str], None]):
        self.session = session
        self.options = session.options
        self.database_url = database_url
        self.name = "postgresql" if database_url.startswith("postgres") else "sqlite"
        self.handled = session.directory / f"handled-{self.name}.log"
        self.progress = progress
        self.routes: list[RouteRun] = []
        self.extras: dict[str, Any] = {}

    def start(self, env: Mapping[str, str]) -> Server:
        # The load comes from one address, past the default per-client connection cap.
        per_client = {"RECEIVER_MAX_CONNECTIONS_PER_CLIENT": str(self.options.concurrency + 8)}
        return start_receiver(
            self.session.directory,
            database_url=self.database_url,
            secret=self.session.secret,
            handled=self.handled,
            extra={**per_client, **env},
        )

    def load(self, server: Server, route: str, pools: Mapping[tuple[str, int], JobPool]) -> Load:
        """Warm up, then load `route` for the run's duration."""
        session, url = self.session, self.database_url
        session.send(
            server.url, _WARM_SECONDS, database_url=url, route=route, pool=pools.get((route, 0))
        )
        self.progress(
            f"{self.name}: {route} route, {self.options.concurrency} connections"
            f" for {self.options.duration:g}s"
        )
        return session.send(
            server.url,
            self.options.duration,
            database_url=url,
            route=route,
            pool=pools.get((route, 1)),
        )

    def add(self, route: str, load: Load, grown: float | None) -> None:
        self.routes.append(
            RouteRun(
                route=route,
                request=DESCRIPTIONS[route],
                figures=_figures(load),
                to_floor=None,
                to_static=None,
                bytes_per_callback=grown,
            )
        )

    def run(self, *, main: bool) -> Backend:
        options, session = self.options, self.session
        migrate(self.database_url, session.directory)
        pools = provision(
            self.database_url,
            [route for route in options.routes if route in JOB_ROUTES],
            session.prefix,
            concurrency=options.concurrency,
            seconds=(_WARM_SECONDS, options.duration),
        )
        posts = [route for route in options.routes if route in POST_ROUTES]
        if posts:
            self.posts(posts, pools, main=main)
        if "nudge" in options.routes:
            self.nudges(pools)
        two = None
        if self.name == "postgresql" and "static" in options.routes and options.concurrency > 1:
            two = self.two_processes()
        check = _check(session, self.database_url)
        static = next((run for run in self.routes if run.route == "static"), None)
        return Backend(
            database=self.name,
            routes=self.routes,
            bytes_per_callback=static.bytes_per_callback if static else None,
            two_processes=two,
            check=check,
        )

    def posts(
        self, routes: list[str], pools: Mapping[tuple[str, int], JobPool], *, main: bool
    ) -> None:
        """Every POST route on one receiver, then (main backend) delivery latency and soak."""
        session, url = self.session, self.database_url
        phase = _Phase(session, url)
        self.progress(f"{self.name}: start")
        server = self.start(route_env(session.secret))
        try:
            # A cold start is over when a provider's callback is acknowledged (committed);
            # the whole app, framework included, when its health check answers.
            start_to_callback = server.ready(probe=_start_probe(session, url))
            start_to_ready = server.ready()
            for route in routes:
                if route == "static" and main:
                    work = functools.partial(self.load, server, route, pools)
                    peak, samples = _with_rss(server, work)
                    self.extras["rss_mb"] = round(max(samples or [server.rss()]) / 2**20, 1)
                    drain = _wait_handled(self.handled, session.posted(url))
                    self.extras["backlog_drain_s"] = round(drain, 2)
                else:
                    peak = self.load(server, route, pools)
                self.add(route, peak, phase.bytes_per_callback(self.handled))
            if main:
                static = next((run for run in self.routes if run.route == "static"), None)
                if self.options.delivery and static is not None:
                    rate = static.figures.requests_per_s
                    self.progress(f"{self.name}: delivery latency at {rate / 2:.0f}/s")
                    self.extras["delivery"] = _delivery(session, server, self.handled, url, rate)
                if self.options.soak_callbacks > 0:
                    self.progress(f"{self.name}: soak of {self.options.soak_callbacks} callbacks")
                    self.extras["soak"] = _soak(session, server, url)
                self.extras["start_to_callback_ms"] = round(start_to_callback, 1)
                self.extras["start_to_ready_ms"] = round(start_to_ready, 1)
        finally:
            server.stop()

    def nudges(self, pools: Mapping[tuple[str, int], JobPool]) -> None:
        """GET nudges on a receiver without worker: each is kept and its pull scheduled, and
        the pulls wait, so what is timed is the nudge's own path and write."""
        phase = _Phase(self.session, self.database_url)
        server = self.start(route_env(self.session.secret, nudges=True))
        try:
            server.ready()
            load = self.load(server, "nudge", pools)
        finally:
            server.stop()
        self.add("nudge", load, phase.bytes_per_callback(None))

    def two_processes(self) -> Figures:
        """The static route on two receivers sharing the database, half the connections each.

        Throughput is the sum of both; percentiles are over both loads' answers (with wrk,
        which keeps no latencies, the mean of the two p50s and the worse p99).
        """
        session, url = self.session, self.database_url
        half = (self.options.concurrency + 1) // 2
        shares = (half, self.options.concurrency - half)
        self.progress(f"{self.name}: two receiver processes, {shares[0]}+{shares[1]} connections")
        servers = [self.start(route_env(session.secret)) for _ in shares]
        try:
            for server in servers:
                server.ready()

            def loads(seconds: float) -> list[Load]:
                return _in_parallel(
                    *(
                        lambda server=server, share=share: session.send(
                            server.url, seconds, database_url=url, concurrency=share
                        )
                        for server, share in zip(servers, shares, strict=True)
                    )
                )

            loads(_WARM_SECONDS)
            both = loads(self.options.duration)
        finally:
            for server in servers:
                server.stop()
        latencies = [ms for load in both for ms in load.latencies_ms]
        p50 = percentile(latencies, 0.5) if latencies else sum(x.p50_ms for x in both) / 2
        p99 = percentile(latencies, 0.99) if latencies else max(x.p99_ms for x in both)
        return Figures(
            requests_per_s=round(sum(load.requests_per_s for load in both), 1),
            p50_ms=round(p50, 2),
            p99_ms=round(p99, 2),
            requests=sum(load.requests for load in both),
            acknowledged=sum(load.acknowledged for load in both),
            errors=sum(load.errors for load in both),
        )


def _external(session: _Session, progress: Callable[[str], None]) -> dict[str, Any]:
    """A receiver already running at `--url`: its static route, checked with `--database-url`."""
    options = session.options
    url = options.url or ""
    progress(f"receiver at {url}")
    session.send(url, _WARM_SECONDS, database_url=options.database_url)
    peak = session.send(url, options.duration, database_url=options.database_url)
    run = RouteRun(
        route="static",
        request=DESCRIPTIONS["static"],
        figures=_figures(peak),
        to_floor=None,
        to_static=None,
        bytes_per_callback=None,
    )
    check = _check(session, options.database_url)
    backend = Backend(
        database="external", routes=[run], bytes_per_callback=None, two_processes=None, check=check
    )
    return {"backends": [backend]}


def run_bench(options: Options, *, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Run the whole benchmark and return its report."""
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp:
        directory = Path(tmp)
        session = _Session(options, directory)
        floor = floor_after = webhook = None
        if options.floor:
            progress("floor: a bare ASGI app on the same uvicorn")
            floor = _measure(session, start_floor(directory))
        if options.webhook and webhook_path():
            progress("adnanh/webhook")
            webhook = _measure(session, start_webhook(directory, session.secret))
        if options.url is not None:
            found = _external(session, progress)
        else:
            found = {"backends": []}
            main_url = options.database_url or f"sqlite:///{directory / 'bench.db'}"
            urls = [main_url]
            if options.compare_postgres:
                urls.append(options.compare_postgres)
            for index, url in enumerate(urls):
                receiver = _Receiver(session, url, progress)
                found["backends"].append(receiver.run(main=index == 0))
                if index == 0:
                    found.update(receiver.extras)
        if options.floor:
            progress("floor again: it drifts")
            floor_after = _measure(session, start_floor(directory))
        backends: list[Backend] = found.pop("backends")
        backends = ratios(backends, [f for f in (floor, floor_after) if f is not None])
        checks = [backend.check for backend in backends]
        check = Check(
            checked=any(c.checked for c in checks),
            acknowledged=sum(c.acknowledged for c in checks),
            stored=sum(c.stored for c in checks),
            missing=sum(c.missing for c in checks),
            ok=all(c.ok for c in checks),
        )
        main = backends[0]
        static = next((run for run in main.routes if run.route == "static"), None)
        if static is None:
            raise RuntimeError("the static route was not run")
        headline: dict[str, float] = {}
        if static.to_floor is not None:
            headline["receiver_to_floor"] = static.to_floor
        if webhook is not None and webhook.requests_per_s:
            headline["receiver_to_webhook"] = round(
                static.figures.requests_per_s / webhook.requests_per_s, 3
            )
        return Report(
            machine=_machine(),
            options=options,
            generator="wrk" if session.use_wrk else "builtin",
            floor=floor,
            floor_after=floor_after,
            webhook=webhook,
            receiver=static.figures,
            start_to_callback_ms=found.get("start_to_callback_ms"),
            start_to_ready_ms=found.get("start_to_ready_ms"),
            rss_mb=found.get("rss_mb"),
            db_bytes_per_callback=main.bytes_per_callback,
            backlog_drain_s=found.get("backlog_drain_s"),
            delivery=found.get("delivery"),
            soak=found.get("soak"),
            ratios=headline | _backend_ratio(backends),
            backends=backends,
            targets=targets(backends, options.concurrency, check),
            check=check,
        )


def _measure(session: _Session, server: Server) -> Figures:
    try:
        server.ready()
        return session.measure(server)
    finally:
        server.stop()


def _backend_ratio(backends: list[Backend]) -> dict[str, float]:
    rates = {
        backend.database: run.figures.requests_per_s
        for backend in backends
        for run in backend.routes
        if run.route == "static"
    }
    if rates.get("sqlite") and "postgresql" in rates:
        return {"postgres_to_sqlite": round(rates["postgresql"] / rates["sqlite"], 3)}
    return {}
