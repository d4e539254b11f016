"""Group commit on SQLite: concurrent writes share a transaction, each answered after its commit."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from live_process import free_port
from procs import HANDLER_MODULE, SECRET, start_receiver, wait_healthy
from test_store import add_job, make_update, record

from receiver.bench.load import builtin_load
from receiver.errors import StoreUnavailable
from receiver.models import Status
from receiver.store import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}", busy_timeout_ms=200)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def committed_events(db: Path) -> int:
    """Events another connection can see: only committed ones."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


class TestBatch:
    """A batch commits together, and one item's failure is its own."""

    async def test_concurrent_records_each_see_their_own_commit(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """When each of 50 concurrent records returns, its event is visible to another reader."""
        for n in range(50):
            await add_job(store, f"job_{n}", task_id=f"task-{n}")
        seen: list[int] = []

        async def one(n: int) -> None:
            await record(store, make_update(Status.RUNNING, 0.5), job_id=f"job_{n}")
            seen.append(committed_events(tmp_path / "receiver.db"))

        await asyncio.gather(*(one(n) for n in range(50)))
        # Each caller heard back only after a commit holding its event: by the time the
        # k-th caller looked, at least k events were committed.
        assert all(count >= k + 1 for k, count in enumerate(seen))
        assert 50 == committed_events(tmp_path / "receiver.db")

    async def test_a_failing_item_leaves_the_rest_of_its_batch_committed(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """A record for a missing job raises LookupError; the records beside it are kept."""
        for n in range(10):
            await add_job(store, f"job_{n}", task_id=f"task-{n}")
        results = await asyncio.gather(
            *(record(store, make_update(Status.RUNNING, 0.5), job_id=f"job_{n}") for n in range(5)),
            record(store, make_update(Status.RUNNING, 0.5), job_id="job_missing"),
            *(
                record(store, make_update(Status.RUNNING, 0.5), job_id=f"job_{n}")
                for n in range(5, 10)
            ),
            return_exceptions=True,
        )
        assert [LookupError] == [type(r) for r in results if isinstance(r, BaseException)]
        assert 10 == committed_events(tmp_path / "receiver.db")

    async def test_a_duplicate_row_fails_only_its_own_write(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """Two jobs with one id in one batch: the second is StoreUnavailable, the others stand."""
        results = await asyncio.gather(
            add_job(store, "job_a", task_id="task-a"),
            add_job(store, "job_a", task_id="task-a2"),
            add_job(store, "job_b", task_id="task-b"),
            return_exceptions=True,
        )
        assert [None, StoreUnavailable, None] == [
            type(r) if isinstance(r, BaseException) else None for r in results
        ]
        assert {"job_a", "job_b"} == {job.id for job in (await store.list_jobs()).items}

    async def test_a_locked_database_fails_the_whole_batch_then_recovers(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """Another process's lock: every queued write is StoreUnavailable; then all commit again."""
        for n in range(5):
            await add_job(store, f"job_{n}", task_id=f"task-{n}")
        locker = sqlite3.connect(tmp_path / "receiver.db", isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            results = await asyncio.gather(
                *(
                    record(store, make_update(Status.RUNNING, 0.5), job_id=f"job_{n}")
                    for n in range(5)
                ),
                return_exceptions=True,
            )
            assert [StoreUnavailable] * 5 == [type(r) for r in results]
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert 0 == committed_events(tmp_path / "receiver.db")
        await asyncio.gather(
            *(record(store, make_update(Status.RUNNING, 0.5), job_id=f"job_{n}") for n in range(5))
        )
        assert 5 == committed_events(tmp_path / "receiver.db")


class TestKillAfterAcks:
    """SIGKILL the moment N concurrent callbacks were acknowledged: all N are in the store."""

    async def test_every_acknowledged_callback_of_a_burst_survives_kill_nine(
        self, tmp_path: Path
    ) -> None:
        """64 connections; kill -9 as soon as 400 acks arrived; each acked task id is stored."""
        (tmp_path / "kill_handlers.py").write_text(HANDLER_MODULE)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_receiver(tmp_path, port)
        try:
            await wait_healthy(url, process)

            def kill_at_400(count: int) -> None:
                if count == 400:  # at once, from inside the 400th answer's handling
                    process.send_signal(signal.SIGKILL)

            result = await asyncio.wait_for(
                builtin_load(url, SECRET, "burst-", concurrency=64, seconds=60, on_ack=kill_at_400),
                timeout=120,
            )
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert -signal.SIGKILL == process.returncode
        assert result.acknowledged >= 400
        with sqlite3.connect(tmp_path / "receiver.db") as conn:
            stored = {
                row[0]
                for row in conn.execute(
                    "SELECT j.task_id FROM jobs j JOIN events e ON e.job_id = j.id"
                )
            }
        assert [] == sorted(set(result.acked) - stored)
