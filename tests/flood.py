"""Hostile and well-behaved clients for the connection tests, each on its own loopback address.

Not a test module: tests/test_connections.py and tests/test_hostile_traffic.py share it.
Linux routes all of 127.0.0.0/8 to the loopback interface, so binding a client socket's
source address gives each kind of traffic an address of its own, as seen by the receiver.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from live_process import SECRET, callback

__all__ = [
    "SLOW_BODY",
    "SLOW_HEAD",
    "Held",
    "Provider",
    "database_bytes",
    "hold",
    "limit_open_files",
    "open_files",
    "percentile",
    "rss_kib",
]

# A head that never ends, and a body that declares 100,000 bytes and sends one.
SLOW_HEAD = b"POST /hooks/apiframe HTTP/1.1\r\nhost: receiver\r\nx-waiting: "
SLOW_BODY = (
    b"POST /hooks/apiframe HTTP/1.1\r\nhost: receiver\r\ncontent-type: application/json\r\n"
    b"content-length: 100000\r\n\r\n{"
)


def limit_open_files(count: int) -> Callable[[], None]:
    """A `preexec_fn` that lowers the child's RLIMIT_NOFILE (soft and hard) to `count`."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return limit


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def database_bytes(db: Path) -> int:
    """Bytes of pages in use, WAL included (what a checkpoint would leave in the file)."""
    with sqlite3.connect(db) as conn:
        pages, free, size = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
    conn.close()
    return int((pages - free) * size)


def percentile(values: list[float], share: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


@dataclass
class Held:
    """How a connection ended: seconds from connect, and the first bytes the server sent."""

    seconds: float
    answer: bytes
    closed: bool  # False: still open when the test stopped waiting


async def hold(port: int, source: str, opening: bytes, patience: float) -> Held:
    """Connect from `source`, send `opening`, and wait up to `patience` for the server to close."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return Held(time.monotonic() - started, b"", closed=True)
    try:
        writer.write(opening)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), patience)  # to EOF
        return Held(time.monotonic() - started, answer, closed=True)
    except TimeoutError:
        return Held(time.monotonic() - started, b"", closed=False)
    except OSError:  # reset by the server
        return Held(time.monotonic() - started, b"", closed=True)
    finally:
        writer.close()


@dataclass
class Provider:
    """A well-behaved provider on `source`: valid callbacks, each retried on 429/503 with backoff.

    A callback is lost when it is still not acknowledged after `attempts` tries.
    """

    url: str
    source: str
    attempts: int = 5
    sent: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # first try to acknowledgement
    refusals: dict[str, int] = field(default_factory=dict)  # what made it retry, by kind

    async def run(self, prefix: str, count: int, senders: int) -> None:
        """Send `count` callbacks on `senders` connections at once."""
        transport = httpx.AsyncHTTPTransport(local_address=self.source)
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            queue = [f"{prefix}-{n}" for n in range(count)]

            async def sender() -> None:
                while queue:
                    await self.send(client, queue.pop())

            await asyncio.gather(*(sender() for _ in range(senders)))

    async def send(self, client: httpx.AsyncClient, task_id: str) -> None:
        self.sent.append(task_id)
        started = time.monotonic()
        for attempt in range(self.attempts):
            try:
                response = await client.post(
                    f"{self.url}/hooks/apiframe",
                    json=callback(task_id),
                    headers={"x-webhook-secret": SECRET},
                )
            except httpx.TransportError as exc:
                kind = type(exc).__name__
            else:
                if response.status_code == 200:
                    self.latencies.append(time.monotonic() - started)
                    self.acknowledged.append(task_id)
                    return
                kind = str(response.status_code)
                if response.status_code not in (429, 503):
                    break  # a provider retries only what it is told to retry
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
            await asyncio.sleep(0.05 * 2**attempt)
        self.lost.append(task_id)
