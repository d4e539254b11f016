"""Scale-out on a real PostgreSQL: two `serve --no-worker` and two `worker` processes.

Thousands of callbacks spread over both receivers each run their handler exactly once;
with one worker SIGKILLed mid-run, every delivery still completes (at least once).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from receiver.testing import TEST_ADMIN_TOKEN

SECRET = "static-secret-for-the-multiprocess-test"
HANDLER_MODULE = textwrap.dedent(
    """
    import asyncio, os, time
    from receiver import on

    @on("*")
    async def record(event, job):
        # One line per run, written at the start: event id, worker pid, start time.
        line = f"{event.id} {os.getpid()} {time.time():.6f} {job.task_id}\\n".encode()
        fd = os.open(os.environ["HANDLED_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        if job.task_id.startswith("slow-"):
            await asyncio.sleep(0.3)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """Receiver and worker subprocesses on one database, stopped at the end."""

    def __init__(self, tmp_path: Path, database_url: str):
        self.tmp_path = tmp_path
        self.handled = tmp_path / "handled.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(tmp_path),
            "HANDLED_FILE": str(self.handled),
            "RECEIVER_DATABASE_URL": database_url,
            "RECEIVER_HANDLERS": "mp_handlers",
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
            # A handler's lease is its timeout + 30 s: a killed worker's work waits that long.
            "RECEIVER_HANDLER_TIMEOUT": "2",
            "RECEIVER_LOG_LEVEL": "WARNING",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        (tmp_path / "mp_handlers.py").write_text(HANDLER_MODULE)

    def start(self, *args: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "receiver", *args],
                env={**self.env, **env},
                cwd=self.tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.processes.append(process)
        return process

    def receiver(self, name: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        process = self.start("serve", "--no-worker", name=name, RECEIVER_PORT=str(port))
        return f"http://127.0.0.1:{port}", process

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.start("worker", "--grace", "5", name=name)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        """The tail of every process's log, for a failure message."""
        tails = []
        for log in sorted(self.tmp_path.glob("*.log")):
            if log != self.handled:
                tails.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        states = [f"pid {p.pid}: {p.poll()}" for p in self.processes]
        return "\n".join([", ".join(states), *tails])

    def runs(self) -> list[tuple[str, int, float, str]]:
        """(event id, worker pid, start time, task id) of every handler run so far."""
        if not self.handled.exists():
            return []
        found = []
        for line in self.handled.read_text().splitlines():
            event, pid, at, task = line.split(" ")
            found.append((event, int(pid), float(at), task))
        return found


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    running = Cluster(tmp_path, pg_url)
    try:
        yield running
    finally:
        running.stop()


async def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "receiver exited during start"
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("receiver did not become healthy")


async def send(
    cluster: Cluster, urls: list[str], tasks: list[str], *, connections: int = 8
) -> dict[str, float]:
    """Post one finished callback per task, round-robin over `urls`; task -> time of the 200."""
    acked: dict[str, float] = {}
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for n, task in enumerate(tasks):
        queue.put_nowait((urls[n % len(urls)], task))
    limits = httpx.Limits(max_connections=connections * len(urls))

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            url, task = queue.get_nowait()
            body = {
                "task_id": task,
                "task_type": "runway",
                "status": "finished",
                "percentage": 100,
                "video_url": f"https://cdn.example/{task}.mp4",
            }
            try:
                answer = await client.post(
                    f"{url}/hooks/apiframe", json=body, headers={"x-webhook-secret": SECRET}
                )
            except httpx.TransportError as exc:
                raise AssertionError(f"{url}: {exc!r}\n{cluster.logs()}") from exc
            assert 200 == answer.status_code, answer.text
            acked[task] = time.time()

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(sender(client) for _ in range(connections * len(urls))))
    return acked


async def wait_all_done(db: asyncpg.Connection, count: int, timeout: float) -> dict[str, int]:
    """Deliveries by state once `count` are done (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
        states = {row[0]: row[1] for row in rows}
        if states.get("done", 0) >= count or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.2)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.slow
class TestTwoReceiversTwoWorkers:
    """Work ingested by either receiver runs once in one of the workers, and survives a kill."""

    async def test_exactly_once_then_at_least_once_after_a_kill(
        self, cluster: Cluster, db: asyncpg.Connection
    ) -> None:
        """2000 callbacks each run once; then a worker is killed mid-run and nothing is lost."""
        (url_a, receiver_a), (url_b, receiver_b) = cluster.receiver("ra"), cluster.receiver("rb")
        worker_a, worker_b = cluster.worker("wa"), cluster.worker("wb")
        await wait_healthy(url_a, receiver_a)
        await wait_healthy(url_b, receiver_b)

        # Normal operation: every delivery runs exactly once.
        tasks = [f"fast-{n}" for n in range(2000)]
        started = time.monotonic()
        acked = await send(cluster, [url_a, url_b], tasks)
        assert set(tasks) == set(acked)
        ingest_seconds = time.monotonic() - started
        states = await wait_all_done(db, len(tasks), timeout=120)
        assert {"done": len(tasks)} == states
        runs = cluster.runs()
        events = {row[0] for row in await db.fetch("SELECT id FROM events")}
        assert len(tasks) == len(events)
        assert Counter({event: 1 for event in events}) == Counter(run[0] for run in runs), (
            cluster.logs()
        )
        by_worker = Counter(run[1] for run in runs)
        assert {worker_a.pid, worker_b.pid} == set(by_worker), "both workers should take work"
        # From the commit's start (the event's received_at) to the handler's start.
        received = {row[0]: row[1] for row in await db.fetch("SELECT id, received_at FROM events")}
        latency = [run[2] - received[run[0]] for run in runs]

        # A worker dies mid-run: its leased deliveries are taken over after the lease.
        slow = [f"slow-{n}" for n in range(400)]
        sending = asyncio.create_task(send(cluster, [url_a, url_b], slow))
        deadline = time.monotonic() + 60
        while sum(1 for run in cluster.runs() if run[1] == worker_a.pid and "slow" in run[3]) < 50:
            assert time.monotonic() < deadline, "worker a never took slow work"
            await asyncio.sleep(0.05)
        worker_a.send_signal(signal.SIGKILL)
        worker_a.wait(timeout=10)
        await asyncio.wait_for(sending, 120)
        total = len(tasks) + len(slow)
        states = await wait_all_done(db, total, timeout=120)
        assert {"done": total} == states
        runs = cluster.runs()
        ran = Counter(run[0] for run in runs)
        events = {row[0] for row in await db.fetch("SELECT id FROM events")}
        assert set() == events - set(ran), "every event's handler ran"
        duplicates = sum(ran.values()) - len(ran)
        assert set() == set(ran) - events, "no handler ran for an event that is not stored"
        print(
            f"\nmultiprocess: {len(tasks)} callbacks over 2 receivers in {ingest_seconds:.1f}s"
            f" ({len(tasks) / ingest_seconds:.0f}/s); commit -> handler start in another process:"
            f" p50 {statistics.median(latency) * 1000:.0f} ms,"
            f" p95 {percentile(latency, 0.95) * 1000:.0f} ms,"
            f" max {max(latency) * 1000:.0f} ms; runs per worker {sorted(by_worker.values())};"
            f" after SIGKILL of a worker: {len(slow)} more completed, {duplicates} run twice"
        )
        assert worker_b.poll() is None


class TestWorkerProcess:
    """`receiver worker` keeps its heartbeat fresh and stops cleanly on SIGTERM."""

    async def test_heartbeat_probe_and_sigterm(self, cluster: Cluster, tmp_path: Path) -> None:
        """The Kubernetes liveness command passes on a running worker; SIGTERM exits 0."""
        heartbeat = tmp_path / "worker.alive"
        worker = cluster.start("worker", name="w", RECEIVER_HEARTBEAT_FILE=str(heartbeat))
        deadline = time.monotonic() + 30
        while not heartbeat.exists():
            assert worker.poll() is None, (tmp_path / "w.log").read_text()
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.05)
        # The probe of deploy/k8s/worker.yaml, run as the kubelet would.
        probe = f"test $(( $(date +%s) - $(stat -c %Y {heartbeat}) )) -lt 60"
        assert 0 == subprocess.run(["sh", "-c", probe], check=False).returncode
        os.utime(heartbeat, (time.time() - 120, time.time() - 120))
        assert 0 != subprocess.run(["sh", "-c", probe], check=False).returncode
        worker.send_signal(signal.SIGTERM)
        assert 0 == worker.wait(timeout=30)
        assert "worker stopping" in (tmp_path / "w.log").read_text()
