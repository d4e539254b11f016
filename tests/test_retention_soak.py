"""A soak: jobs run to the end through a live receiver whose retention is one second, and
the SQLite file stops growing but for the job rows themselves (kept unless `receiver
prune --jobs`), because the background pruner deletes what ended and the file reuses
(and gives back) the space.

The callbacks go over HTTP to a real receiver (apiframe's, with each job's secret); a
handler finishes every delivery, so each job's rows become prunable a second after it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
from figures import report

from receiver.dispatch import Registry
from receiver.models import Event, Job
from receiver.store import NewJob
from receiver.submit import queued_job
from receiver.testing import LiveReceiver, build_callback, running_receiver
from receiver.verify import digest, mint_secret, mint_token

HALF = 8.0  # seconds of callbacks in each half of the soak
RATE = 160.0  # callbacks a second, the same in both halves (a few thousand in all)
WORKERS = 32  # jobs in flight at once, at most
# Bytes the second half's peak may exceed the first's by: a pruner slowed by a busy machine
# holds more rows at a time (600 KiB more was seen). Unpruned, a half adds about 2.8 MB.
MARGIN = 1024 * 1024


def on_disk(directory: Path) -> int:
    """The database's bytes: the file and its write-ahead log."""
    return sum(
        path.stat().st_size
        for path in (directory / "receiver.db", directory / "receiver.db-wal")
        if path.exists()
    )


def job_bytes(directory: Path) -> int:
    """The bytes of the jobs table and its indexes, which retention keeps by design."""
    with contextlib.closing(
        sqlite3.connect(f"file:{directory / 'receiver.db'}?mode=ro", uri=True)
    ) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        names = [
            row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE tbl_name = 'jobs'")
        ]
        marks = ", ".join("?" * len(names))
        row = db.execute(
            f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ({marks})", names
        )
        return int(row.fetchone()[0])


async def run_jobs(
    live: LiveReceiver, client: httpx.AsyncClient, seconds: float, directory: Path
) -> tuple[int, int]:
    """Jobs from queued to succeeded at RATE callbacks a second, for `seconds`.

    Returns the callbacks sent, and the most bytes the database took meanwhile beside
    the jobs themselves (kept by design: `receiver prune --jobs` deletes them).
    """
    started = time.monotonic()
    stop = started + seconds
    jobs = sent = peak = 0

    async def worker() -> None:
        nonlocal jobs, sent
        while True:
            due = started + jobs * 2 / RATE  # each job is two callbacks
            if due >= stop:
                return
            jobs += 1
            await asyncio.sleep(due - time.monotonic())
            token, secret, task_id = mint_token(), mint_secret(), uuid.uuid4().hex
            job = queued_job("apiframe", task_id, None, None)
            new = NewJob(job=job, token_hash=digest(token), secret_hash=digest(secret))
            await live.runtime.store.create_job(new)
            for status in ("running", "succeeded"):
                callback = build_callback(
                    "apiframe", status, task_id=task_id, token=token, secret=secret, progress=0.5
                )
                answer = await client.post(
                    live.url + callback.path, content=callback.body, headers=callback.headers
                )
                assert 200 == answer.status_code, answer.text
                sent += 1

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, on_disk(directory) - job_bytes(directory))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    finally:
        watcher.cancel()
    return sent, max(peak, on_disk(directory) - job_bytes(directory))


class TestSoak:
    """With a tiny retention and jobs that end, the database file stops growing."""

    async def test_file_stops_growing(self, tmp_path: Path) -> None:
        handlers = Registry()

        @handlers.on("*")
        async def noted(event: Event, job: Job) -> None:
            return None

        env = {"RECEIVER_RETENTION": "1"}  # so the pruner runs every second
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as live,
            # Idle connections dropped well before uvicorn's 5 s keep-alive closes them: a
            # request sent on one just as the server closes it fails (seen under load).
            httpx.AsyncClient(timeout=10, limits=httpx.Limits(keepalive_expiry=1)) as client,
        ):
            first, after_first = await run_jobs(live, client, HALF, tmp_path)
            second, after_second = await run_jobs(live, client, HALF, tmp_path)
            pruner = getattr(live.runtime, "pruner", None)
            last = pruner.last if pruner is not None else None
        print(
            f"\nsoak: {first} callbacks, peak {after_first} bytes beside the jobs;"
            f" then {second} more, peak {after_second} bytes; jobs {job_bytes(tmp_path)} bytes"
        )
        report(
            "retention soak (SQLite, RECEIVER_RETENTION=1)",
            callbacks=first + second,
            peak_bytes_first_half=after_first,
            peak_bytes_second_half=after_second,
            longest_prune_batch_ms=round(last.longest * 1000, 1) if last else "-",
        )
        assert first > 1000 and second > 1000  # a few thousand callbacks in all
        assert after_second <= after_first + MARGIN
