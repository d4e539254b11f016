"""How long retention's batches hold the SQLite writer, and what callbacks feel meanwhile.

    python deploy/bench/prune_batches.py [JOBS] [BATCH]

Fills a fresh SQLite file with JOBS ended jobs (default 10000; three callbacks each, two
handlers, every delivery done) and 500 open ones, then prunes them all with `prune_all`
(BATCH rows per table, default receiver.retention.BATCH) while a caller records a
callback every 2 ms. Prints each kind of write item's time inside the group commit (the
time callbacks in the same flush wait for it) and the callers' commit latency, without
pruning and during it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from receiver.models import Event, Job, RawRequest, Status, Update, id_at, new_id
from receiver.retention import BATCH, prune_all
from receiver.store import NewJob, SQLiteStore, Write

T0 = 1_000_000.0  # the filled jobs ran in 1970: all of them are past any retention


def route(event: Event, job: Job) -> Sequence[str]:
    return ["h0", "h1"]


def raw(at: float) -> RawRequest:
    """A callback's request received at `at`, its id minted then, as the hooks mint it."""
    return RawRequest(
        id=id_at("req", at),
        received_at=at,
        provider="rixapi",
        method="POST",
        path="/hooks/rixapi/[token]",
        query="",
        headers={"content-type": "application/json"},
        body=b'{"status": "running", "task_id": "abc"}' * 25,
        client="127.0.0.1",
    )


async def one_job(store: SQLiteStore, n: int, *, ended: bool) -> None:
    at = T0 + n * 0.01
    job = Job(
        id=f"job_{n:07d}", provider="rixapi", task_id=f"t{n}", status=Status.QUEUED,
        created_at=at, updated_at=at,
    )  # fmt: skip
    await store.create_job(NewJob(job=job))
    steps = [Status.RUNNING, Status.SUCCEEDED, Status.SUCCEEDED] if ended else [Status.RUNNING]
    for k, status in enumerate(steps):
        update = Update(status=status, raw_status=status.value, progress=0.5 if k == 0 else None)
        await store.record(
            Write(update=update, source="callback", job_id=job.id, raw=raw(at + k), at=at + k),
            route=route,
        )
    if ended:
        for delivery in await store.list_deliveries(job_id=job.id):
            await store.finish_delivery(delivery.id, at=at + 5)


async def callbacks(store: SQLiteStore, stop: asyncio.Event, latencies: list[float]) -> None:
    """Record a callback every 2 ms until `stop`, noting how long each commit took."""
    job = Job(
        id=new_id("job"), provider="rixapi", task_id=new_id("t"), status=Status.QUEUED,
        created_at=time.time(), updated_at=time.time(),
    )  # fmt: skip
    await store.create_job(NewJob(job=job))
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        update = Update(status=Status.RUNNING, raw_status="running", progress=min(0.99, n / 1e6))
        await store.record(
            Write(update=update, source="callback", job_id=job.id, raw=raw(time.time())),
            route=route,
        )
        latencies.append(time.perf_counter() - started)
        n += 1
        await asyncio.sleep(0.002)


def timed(store: SQLiteStore, items: dict[str, list[float]]) -> None:
    """Time every write item the store runs from now on, by the work's name."""
    write = store._write

    async def timed_write(work: Callable[[Any], Any]) -> Any:
        inner = getattr(work, "func", work)
        name = getattr(inner, "__name__", "work")
        sql = (getattr(work, "keywords", None) or {}).get("sql", "")
        name += f" ({sql.split()[2]})" if sql else ""

        def run(conn: Any) -> Any:
            started = time.perf_counter()
            try:
                return work(conn)
            finally:
                items.setdefault(name, []).append(time.perf_counter() - started)

        return await write(run)

    store._write = timed_write  # type: ignore[method-assign]


def ms(values: list[float], share: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000:.1f}"


async def main(jobs: int, batch: int) -> None:
    path = Path(tempfile.mkdtemp()) / "prune.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    for start in range(0, jobs, 200):
        await asyncio.gather(
            *(one_job(store, n, ended=True) for n in range(start, min(jobs, start + 200)))
        )
    await asyncio.gather(*(one_job(store, jobs + n, ended=False) for n in range(500)))
    print(f"{jobs} ended jobs, 500 open: {os.path.getsize(path) / 1e6:.1f} MB")
    baseline: list[float] = []
    stop = asyncio.Event()
    caller = asyncio.create_task(callbacks(store, stop, baseline))
    await asyncio.sleep(2)
    stop.set()
    await caller
    items: dict[str, list[float]] = {}
    timed(store, items)
    during: list[float] = []
    stop.clear()
    caller = asyncio.create_task(callbacks(store, stop, during))
    started = time.perf_counter()
    report = await prune_all(store, before=T0 + 1e7, limit=batch)
    took = time.perf_counter() - started
    stop.set()
    await caller
    print(f"pruned {report.counts} in {report.batches} batches of {batch}, {took:.1f} s")
    for name, times in items.items():  # `work` is reclaim's; `_record`, the callbacks'
        print(
            f"  {name}: {len(times)} items, median {statistics.median(times) * 1000:.2f} ms,"
            f" max {max(times) * 1000:.1f} ms"
        )
    for label, latencies in (("without pruning", baseline), ("while pruning", during)):
        print(
            f"callback commits {label}: p50 {ms(latencies, 0.5)} ms, p99 {ms(latencies, 0.99)} ms,"
            f" max {max(latencies) * 1000:.1f} ms ({len(latencies)} callbacks)"
        )
    await store.close()
    print(f"file after pruning: {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(arguments + [10000, BATCH][len(arguments) :])))
