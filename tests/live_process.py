"""A real `receiver serve` subprocess for fault and shutdown tests, and what they read back.

Not a test module: the fault-injection and shutdown suites share it. The receiver runs
with a handlers module written to the test's directory, which is put on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from receiver.testing import TEST_ADMIN_TOKEN

__all__ = [
    "SECRET",
    "ReceiverProcess",
    "callback",
    "free_port",
    "handled_events",
    "run_sync",
    "stored_callbacks",
]

T = TypeVar("T")


def run_sync(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own loop in a thread (safe inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro()).result()


SECRET = "static-secret-for-the-fault-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def callback(task_id: str) -> dict[str, object]:
    """An apiframe "finished" callback for a task submitted elsewhere (the static-secret route)."""
    return {
        "task_id": task_id,
        "task_type": "runway",
        "status": "finished",
        "percentage": 100,
        "video_url": f"https://cdn.example/{task_id}.mp4",
    }


class ReceiverProcess:
    """`python -m receiver serve` on a free port, its database and log in `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        handlers: str,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,  # runs in the child (e.g. setrlimit)
    ):
        self.directory = directory
        self.preexec_fn = preexec_fn
        self.port = free_port()  # a first choice: see `start`
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = directory / "receiver.db"
        self.log = directory / "receiver.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(directory),
            "HANDLED_FILE": str(directory / "handled.log"),
            "RECEIVER_DATABASE_URL": f"sqlite:///{self.db}",
            "RECEIVER_HANDLERS": handlers,
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
            "RECEIVER_PORT": str(self.port),
            "RECEIVER_PUBLIC_URL": self.url,
            "RECEIVER_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        """Start and wait until healthy; a port taken meanwhile by someone else is replaced."""
        for _ in range(3):
            if await self._start_once():
                return
            old, self.port = self.port, free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            for key in ("RECEIVER_PORT", "RECEIVER_PUBLIC_URL"):
                self.env[key] = self.env[key].replace(str(old), str(self.port))
        raise AssertionError(f"receiver could not bind a port: {self.log.read_text()}")

    async def _start_once(self) -> bool:
        """True once healthy; False if the port was in use (a race with another test)."""
        logged = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receiver", "serve"],
                env=self.env,
                cwd=self.directory,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    output = self.log.read_bytes()[logged:]
                    if b"address already in use" in output:
                        return False
                    raise AssertionError(f"receiver exited: {output.decode(errors='replace')}")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("receiver did not become healthy")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM, as a service manager stops it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float) -> bool:
        """Wait for the process to end; whether it ended as a stopped service does.

        uvicorn re-raises the SIGTERM it caught once its shutdown is over, so a clean stop
        ends by that signal (as service managers expect), or with 0.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, "receiver did not exit in time"
            await asyncio.sleep(0.05)
        return self.process.returncode in (0, -signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


_STORED = (
    "SELECT j.task_id, e.id, d.state FROM jobs j JOIN events e ON e.job_id = j.id"
    " JOIN deliveries d ON d.event_id = e.id"
)


def stored_callbacks(db: Path | str) -> dict[str, tuple[str, str]]:
    """task id -> (event id, delivery state) for every stored callback with a delivery.

    `db` is a SQLite file, or a PostgreSQL URL.
    """
    if isinstance(db, str):
        return {task: (event, state) for task, event, state in run_sync(lambda: _pg_rows(db))}
    with sqlite3.connect(db) as conn:
        rows = conn.execute(_STORED).fetchall()
    conn.close()
    return {task: (event, state) for task, event, state in rows}


async def _pg_rows(url: str) -> list[tuple[str, str, str]]:
    import asyncpg

    from receiver.store.postgres import pool_options

    connection = await asyncpg.connect(pool_options(url)[0])
    try:
        return [tuple(row) for row in await connection.fetch(_STORED)]
    finally:
        await connection.close()


def handled_events(directory: Path) -> Counter[str]:
    """How many times the handler ran for each event id (from the handlers' log file)."""
    path = directory / "handled.log"
    if not path.exists():
        return Counter()
    return Counter(line.split(" ")[0] for line in path.read_text().splitlines() if line)
