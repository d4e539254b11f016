"""Faults in our own store: a locked, full or read-only database gives 503s, never 500s or
hangs, and the same running receiver recovers by itself when the fault clears.

The faults are real, injected into a real `receiver serve` process from outside:

- locked: another connection holds `BEGIN EXCLUSIVE` on the file (SQLITE_BUSY after the
  busy timeout, RECEIVER_STORE_TIMEOUT);
- full: the WAL is checkpointed empty, then the receiver's RLIMIT_FSIZE is lowered to
  100 bytes with prlimit, so no file of the receiver can grow: its next WAL frame fails
  with EFBIG, which SQLite reports as SQLITE_IOERR_WRITE (a full disk gives ENOSPC and
  SQLITE_FULL, handled alike; `TestFullDatabase` gets a real SQLITE_FULL in process);
- read-only: `chattr +i` on the database and its WAL (not the -shm file, which is
  mmapped: writing to it would kill the process with SIGBUS); the commit's write fails
  with EPERM, SQLITE_IOERR_WRITE, as on a file system remounted read-only. It needs
  CAP_LINUX_IMMUTABLE and a file system with the flag, and is skipped without them.

Around each fault: callbacks before and after are acknowledged, those during it get 503
in bounded time and are retried as a provider would, every acknowledged callback's
handler runs exactly once, and a job whose poll fell due during the fault is polled to
its end afterwards (the dispatcher and the poller carried on in the same process).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from figures import report
from live_process import (
    SECRET,
    ReceiverProcess,
    callback,
    handled_events,
    stored_callbacks,
)

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.errors import ConfigError, StoreUnavailable
from receiver.models import Quarantined
from receiver.runtime import Runtime
from receiver.serving import serve_in_loop
from receiver.simulator import SimConfig, run_simulator
from receiver.store import SQLiteStore
from receiver.testing import TEST_ADMIN_TOKEN

HANDLER_MODULE = textwrap.dedent(
    """
    import os
    from receiver import on

    @on("*")
    def record(event, job):
        line = f"{event.id} {job.task_id}\\n".encode()
        fd = os.open(os.environ["HANDLED_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    """
)

STORE_TIMEOUT = 1.0
# A hook may wait once for the connection and once for SQLite's lock; the rest is slack
# for a loaded two-core CI machine.
ANSWER_BOUND = 2 * STORE_TIMEOUT + 3.0
# A job with no callback is polled this long after it was submitted: inside the fault,
# which is held for FAULT_SECONDS at least.
POLL_DEADLINE = 1.0
FAULT_SECONDS = 3.0


class Answer:
    """What one callback got back, and how long it took."""

    def __init__(self, status: int, retry_after: str | None, seconds: float):
        self.status = status
        self.retry_after = retry_after
        self.seconds = seconds


async def post(client: httpx.AsyncClient, path: str, body: object, secret: str = SECRET) -> Answer:
    started = time.monotonic()
    response = await client.post(path, json=body, headers={"x-webhook-secret": secret})
    return Answer(
        response.status_code, response.headers.get("retry-after"), time.monotonic() - started
    )


async def post_until_accepted(client: httpx.AsyncClient, task_id: str, *, within: float) -> int:
    """Post as a provider does, retrying a 503; the last status seen."""
    deadline = time.monotonic() + within
    while True:
        answer = await post(client, "/hooks/apiframe", callback(task_id))
        if answer.status != 503 or time.monotonic() > deadline:
            return answer.status
        await asyncio.sleep(0.2)


async def wait_done(receiver: ReceiverProcess, tasks: set[str], *, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = stored_callbacks(receiver.db)
        if all(state.get(task, ("", ""))[1] == "done" for task in tasks):
            return
        await asyncio.sleep(0.2)


async def wait_all_delivered(receiver: ReceiverProcess, *, within: float) -> None:
    """Until no delivery of any event is left unfinished."""
    deadline = time.monotonic() + within
    while count(receiver.db, "deliveries", "state != 'done'"):
        assert time.monotonic() < deadline, "deliveries still unfinished"
        await asyncio.sleep(0.2)


Fault = Callable[[ReceiverProcess], Awaitable[Callable[[], None]]]


async def locked(receiver: ReceiverProcess) -> Callable[[], None]:
    """Another connection takes the write lock and keeps it."""
    locker = sqlite3.connect(receiver.db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    def clear() -> None:
        locker.execute("ROLLBACK")
        locker.close()

    return clear


async def disk_full(receiver: ReceiverProcess) -> Callable[[], None]:
    """The receiver may write no file past 100 bytes, its WAL first emptied."""
    checkpoint = sqlite3.connect(receiver.db, isolation_level=None)
    try:
        for _ in range(50):
            busy, _, _ = checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            await asyncio.sleep(0.1)
        assert 0 == busy, "could not empty the WAL before the fault"
    finally:
        checkpoint.close()
    assert 0 == Path(f"{receiver.db}-wal").stat().st_size
    # Only the soft limit: raising a hard limit again would need CAP_SYS_RESOURCE.
    _, hard = resource.prlimit(receiver.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(receiver.pid, resource.RLIMIT_FSIZE, (100, hard))

    def clear() -> None:
        resource.prlimit(receiver.pid, resource.RLIMIT_FSIZE, (hard, hard))

    return clear


def chattr(flag: str, *paths: Path) -> bool:
    result = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    return result.returncode == 0


async def read_only(receiver: ReceiverProcess) -> Callable[[], None]:
    """The database and its WAL become immutable."""
    files = (receiver.db, Path(f"{receiver.db}-wal"))
    assert chattr("+i", *files), "chattr +i failed on the database"

    def clear() -> None:
        assert chattr("-i", *files)

    return clear


def can_make_immutable(directory: Path) -> bool:
    probe = directory / "chattr-probe"
    probe.write_text("x")
    try:
        return chattr("+i", probe)
    except FileNotFoundError:  # no chattr on this machine
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            chattr("-i", probe)


@contextlib.asynccontextmanager
async def receiver_in(tmp_path: Path) -> AsyncIterator[ReceiverProcess]:
    """A receiver whose apiframe is a simulator that never calls back: its jobs are polled."""
    (tmp_path / "fault_handlers.py").write_text(HANDLER_MODULE)
    async with run_simulator(SimConfig(api_keys={"apiframe": "af-key"}, lose=True)) as sim:
        receiver = ReceiverProcess(
            tmp_path,
            handlers="fault_handlers",
            env={
                "RECEIVER_STORE_TIMEOUT": str(STORE_TIMEOUT),
                "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
                "RECEIVER_APIFRAME_API_KEY": "af-key",
                "RECEIVER_DEADLINE": str(POLL_DEADLINE),
                "RECEIVER_POLL_INTERVAL": "0.2",
            },
        )
        await receiver.start()
        try:
            yield receiver
        finally:
            receiver.kill()


async def submit(client: httpx.AsyncClient) -> str:
    """Submit a job through the admin API; the id of the job."""
    answer = await client.post(
        "/jobs",
        json={"provider": "apiframe", "input": {"prompt": "a mech", "duration": 5}},
        headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
    )
    assert 201 == answer.status_code, answer.text
    return str(answer.json()["id"])


def poll_events(db: Path, job_id: str) -> list[tuple[str, float]]:
    """(status, received_at) of the job's events that came from a poll."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, received_at FROM events WHERE job_id = ? AND source = 'poll'"
            " ORDER BY seq",
            (job_id,),
        ).fetchall()
    conn.close()
    return [(str(status), float(at)) for status, at in rows]


def events_with_deliveries(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT DISTINCT event_id FROM deliveries").fetchall()
    conn.close()
    return {row[0] for row in rows}


class TestFaultsInOurStore:
    """During a store fault hooks answer 503 with Retry-After in bounded time; after it, the
    same process accepts again and every acknowledged callback is handled exactly once."""

    @pytest.mark.parametrize(
        "fault",
        [
            pytest.param(locked, id="locked"),
            pytest.param(disk_full, id="disk-full"),
            pytest.param(read_only, id="read-only"),
        ],
    )
    async def test_fault_gives_503_and_the_receiver_recovers(
        self, tmp_path: Path, fault: Fault
    ) -> None:
        """Before, during and after the fault: 200s, then bounded 503s, then 200s again."""
        if fault is read_only and not can_make_immutable(tmp_path):
            pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE)")
        async with (
            receiver_in(tmp_path) as receiver,
            httpx.AsyncClient(base_url=receiver.url, timeout=30) as client,
        ):
            pid = receiver.pid
            before = {f"before-{n}" for n in range(20)}
            answers = await asyncio.gather(
                *(post(client, "/hooks/apiframe", callback(t)) for t in sorted(before))
            )
            assert [200] * len(before) == [a.status for a in answers]
            await wait_done(receiver, before, within=30)
            polled_job = await submit(client)  # its first poll falls due during the fault
            requests_before = count(receiver.db, "requests")
            quarantined_before = count(receiver.db, "quarantine")

            clear = await fault(receiver)
            fault_began = time.monotonic()
            try:
                during = [f"during-{n}" for n in range(12)]
                refused = await asyncio.gather(
                    *(post(client, "/hooks/apiframe", callback(t)) for t in during),
                    # A wrong secret is still refused; only its quarantine copy is lost.
                    post(client, "/hooks/apiframe", callback("intruder"), secret="wrong"),
                    # A bad body's job lookup by token (a read) still answers. (A nudge or a
                    # callback to a job's URL is looked up inside its write: 503 like these.)
                    post(client, "/hooks/apiframe/no-such-token", ["not an object"]),
                )
                await asyncio.sleep(max(0.0, fault_began + FAULT_SECONDS - time.monotonic()))
                assert receiver.alive()
            finally:
                clear()
                cleared_at = time.time()

            callbacks = refused[: len(during)]
            assert [(503, "5")] * len(during) == [(a.status, a.retry_after) for a in callbacks]
            slowest = max(a.seconds for a in callbacks)
            assert slowest < ANSWER_BOUND, f"a 503 took {slowest:.1f}s"
            assert 401 == refused[len(during)].status
            assert 404 == refused[len(during) + 1].status

            # The provider retries what got a 503; new callbacks come in too.
            after = {f"after-{n}" for n in range(20)}
            statuses = await asyncio.gather(
                *(post_until_accepted(client, t, within=15) for t in [*during, *sorted(after)])
            )
            assert [200] * (len(during) + len(after)) == list(statuses)
            acknowledged = before | set(during) | after
            await wait_done(receiver, acknowledged, within=60)
            # The poller carried on too: the job with no callback is polled to its end.
            deadline = time.monotonic() + 60
            while ("succeeded", True) not in {
                (status, at >= cleared_at) for status, at in poll_events(receiver.db, polled_job)
            }:
                assert time.monotonic() < deadline, "the overdue job was not polled after the fault"
                await asyncio.sleep(0.2)
            await wait_done(receiver, acknowledged, within=30)
            # The poll's events have deliveries too: let them finish before the kill.
            await wait_all_delivered(receiver, within=30)
            assert pid == receiver.pid and receiver.alive()

        state = stored_callbacks(receiver.db)
        assert set() == acknowledged - state.keys()
        assert [] == sorted(t for t in acknowledged if state[t][1] != "done")
        runs = handled_events(tmp_path)
        # Every event that was routed to the handler (callbacks and the poll's) ran it once.
        assert {event: 1 for event in events_with_deliveries(receiver.db)} == dict(runs)
        assert {state[t][0] for t in acknowledged} <= runs.keys()
        # Nothing of the refused attempts was half kept: one raw request per acknowledgement.
        assert requests_before + len(during) + len(after) == count(receiver.db, "requests")
        assert quarantined_before == count(receiver.db, "quarantine")
        with sqlite3.connect(receiver.db) as db:
            assert [("ok",)] == db.execute("PRAGMA integrity_check").fetchall()
        db.close()
        report(
            "fault injection",
            fault=f"database {fault.__name__.replace('_', ' ')}",
            sent=len(acknowledged) + len(during),
            acknowledged=len(acknowledged),
            refused_503=len(during),
            slowest_503=f"{slowest:.2f}s",
            stored=len(acknowledged & state.keys()),
            lost=len(acknowledged - state.keys()),
            fired_twice=sum(1 for n in runs.values() if n > 1),
        )


def count(db: Path, table: str, where: str = "1") -> int:
    with sqlite3.connect(db) as conn:
        (rows,) = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
    conn.close()
    return int(rows)


@contextlib.asynccontextmanager
async def quiet_receiver(tmp_path: Path, store: SQLiteStore) -> AsyncIterator[httpx.AsyncClient]:
    """A receiver without its loops, so only the requests of the test touch the store."""
    settings = load_settings(
        {
            "RECEIVER_DATABASE_URL": store.url,
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        },
        config_file=None,
    )
    app = create_app(settings, store=store, handlers=Registry(), run_loops=False)
    async with (
        serve_in_loop(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


class TestFullDatabase:
    """SQLITE_FULL (the database may not grow) is unavailable, and passes when room is made."""

    async def test_full_database_then_room_again(self, tmp_path: Path) -> None:
        """With max_page_count at the current size, a write that needs a page fails, then works."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        await store.open()
        try:
            # Free pages (migrations drop indexes) would take a write without growing.
            await (await store.db.execute("PRAGMA incremental_vacuum")).fetchall()
            (pages,) = await (await store.db.execute("PRAGMA page_count")).fetchone() or (0,)
            await store.db.execute(f"PRAGMA max_page_count = {pages}")
            entries = [quarantined(n, size=8192) for n in range(3)]
            with pytest.raises(StoreUnavailable, match="full"):
                for entry in entries:
                    await store.quarantine(entry)
            await store.db.execute(f"PRAGMA max_page_count = {pages + 100}")
            await store.quarantine(entries[-1])
            kept = await store.list_quarantine()
        finally:
            await store.close()
        assert [entries[-1].id] == [q.id for q in kept]


def quarantined(n: int, *, size: int) -> Quarantined:
    return Quarantined(
        id=f"qua_{n}",
        received_at=0.0,
        provider="apiframe",
        reason="bad_json",
        status_code=400,
        method="POST",
        path="/hooks/apiframe",
        query="",
        headers={},
        body=b"x" * size,
        client=None,
    )


class TestBrokenConnections:
    """A connection that breaks under the store costs one 503, then is reopened by itself."""

    async def test_read_fault_on_job_lookup_is_503_then_recovers(self, tmp_path: Path) -> None:
        """The reading connection closed under a job lookup gives 503; the next lookup works.

        A nudge reads nothing (its job is looked up inside its write): it is not touched."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        admin = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
        async with quiet_receiver(tmp_path, store) as client:
            assert store._reader is not None
            await store._reader.close()
            nudge = await client.get("/hooks/apiframe/some-token")
            broken = await client.get("/jobs/job_none", headers=admin)
            healed = await client.get("/jobs/job_none", headers=admin)
        assert 404 == nudge.status_code
        assert (503, "5") == (broken.status_code, broken.headers.get("retry-after"))
        assert 404 == healed.status_code

    async def test_read_fault_on_a_jobs_own_url_is_503_then_recovers(self, tmp_path: Path) -> None:
        """A POST to a job's own URL reads nothing before its write (its token is looked up
        inside it), but a bad body's answer needs the job (404, 401 or 400): that read,
        broken, is a 503 too."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        async with quiet_receiver(tmp_path, store) as client:
            assert store._reader is not None
            await store._reader.close()
            written = await post(client, "/hooks/apiframe/some-token", callback("t-1"))
            broken = await post(client, "/hooks/apiframe/some-token", ["not an object"])
            healed = await post(client, "/hooks/apiframe/some-token", ["not an object"])
        assert 404 == written.status  # no such job, found so by the write
        assert (503, "5") == (broken.status, broken.retry_after)
        assert 404 == healed.status

    async def test_write_connection_closed_is_503_then_reopened(self, tmp_path: Path) -> None:
        """The writing connection closed under a callback gives 503; the retry is stored."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        async with quiet_receiver(tmp_path, store) as client:
            await store.db.close()
            broken = await post(client, "/hooks/apiframe", callback("t-1"))
            healed = await post(client, "/hooks/apiframe", callback("t-1"))
            job = await store.job_by_task("apiframe", "t-1")
        assert (503, "5") == (broken.status, broken.retry_after)
        assert 200 == healed.status
        assert job is not None and "succeeded" == job.status.value

    async def test_store_fault_inside_a_transaction_rolls_back(self, tmp_path: Path) -> None:
        """A transaction cut by a fault leaves nothing behind and the next one commits."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}", busy_timeout_ms=100)
        await store.open()
        try:
            with pytest.raises(StoreUnavailable):
                async with store._transaction() as db:
                    await db.execute(
                        "INSERT INTO quarantine (id, received_at, provider, reason, status_code,"
                        " method, path, query, headers, body, client)"
                        " VALUES ('qua_1', 0, 'x', 'r', 400, 'POST', '/', '', '{}', x'', NULL)"
                    )
                    await db.execute("SELECT * FROM no_such_table")  # a real SQLite error
            assert [] == await store.list_quarantine()
            assert not store.db.in_transaction
        finally:
            await store.close()


class TestStoreTimeoutSetting:
    """RECEIVER_STORE_TIMEOUT bounds how long the store waits for a lock."""

    def test_setting_reaches_the_store(self, tmp_path: Path) -> None:
        """The store is built with the configured timeout, in milliseconds."""
        settings = load_settings(
            {
                "RECEIVER_STORE_TIMEOUT": "0.25",
                "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
                "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            },
            config_file=None,
        )
        store = Runtime.build(settings, handlers=Registry()).store
        assert isinstance(store, SQLiteStore)
        assert 250 == store._busy_timeout_ms

    @pytest.mark.parametrize("value", ["0", "-1", "never"])
    def test_bad_values_name_the_variable(self, value: str) -> None:
        """Zero, negative or non-numeric stops the start with the variable's name."""
        with pytest.raises(ConfigError, match="RECEIVER_STORE_TIMEOUT"):
            load_settings({"RECEIVER_STORE_TIMEOUT": value}, config_file=None)
