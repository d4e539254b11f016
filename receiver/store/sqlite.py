"""The embedded default store: one SQLite file in WAL mode, through aiosqlite.

Writes go through one connection, serialised by an asyncio lock around `BEGIN
IMMEDIATE` transactions, so the state machine always reads the job it is about to
change. Reads use a second connection, so they never see a transaction in progress
(WAL lets them run beside the writer). `synchronous=FULL` makes every acknowledged
commit survive a power cut, not only a killed process.

A fault (locked, full or read-only file) raises StoreUnavailable within a bound: each
connection's turn is waited for at most `busy_timeout_ms`, and SQLite waits as long for
the file's lock. The failed transaction is rolled back, and a connection left unusable
is reopened on next use, so the store recovers by itself once the fault clears.

The hot writes (`record`, deliveries' claims and outcomes, the quarantine) are
group-committed: concurrent callers queue their work and await it; one flush runs
the whole queue in one transaction, each item inside its own SAVEPOINT, so an fsync
and the thread round trips are shared by the batch while each caller still hears
back only after the commit that holds its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from receiver.costs import DAY, BudgetExceeded, Spend, check_budgets, day_start, spend_row
from receiver.errors import ConfigError, StoreUnavailable
from receiver.models import (
    Delivery,
    DeliveryState,
    Event,
    Job,
    Quarantined,
    RawRequest,
    StoredFile,
    now,
)
from receiver.state import dedupe_digest
from receiver.store.base import (
    AnswerNote,
    Claim,
    Claimed,
    DeliverySummary,
    JobPage,
    KeyedJob,
    NewJob,
    Reaped,
    Recorded,
    Router,
    Store,
    TokenMatch,
    Worker,
    Write,
)
from receiver.store.migrations import migrations
from receiver.store.recording import apply_write, claimer, dedupe_key_of
from receiver.store.rows import (
    ANSWERED_REQUESTS,
    DELIVERIES,
    EVENT_SELECT,
    EVENT_WIDTH,
    EVENTS,
    JOB_COUNTS,
    JOB_STATE_COLUMNS,
    JOBS,
    PRICED,
    QUARANTINE,
    REQUESTS,
    event_values,
    job_counts_of,
    job_state_values,
    list_status_terms,
    prune_values,
    read_event,
    spend_bound,
    to_json,
)

__all__ = ["SQLiteStore", "metadata_path", "sqlite_path"]

log = logging.getLogger("receiver.store")

# What aiosqlite raises (as ValueError) for a connection that is closed or whose thread died.
_CLOSED = ("no active connection", "Connection closed")


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, ValueError) and any(text in str(exc) for text in _CLOSED)


T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]

# Errors that belong to one item of a batch (its own bad row), not to the database: the
# item's savepoint is rolled back and the rest of the batch commits.
_ITEM_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    LookupError,
    ValueError,
    BudgetExceeded,
)


def _is_fault(exc: BaseException) -> bool:
    """A failing database, or one closed under a caller (aiosqlite then raises ValueError)."""
    return isinstance(exc, sqlite3.Error) or _is_closed(exc)


def _breaks_connection(exc: BaseException) -> bool:
    """Whether a fault may have left the connection unusable, so it is reopened.

    OperationalError (locked, busy, full, I/O error, read-only) leaves a connection
    usable once SQLite rolled back; anything else (closed, corrupt, misuse) may not.
    """
    return _is_closed(exc) or (
        isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.OperationalError)
    )


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# Built once: the hot path only binds values. Extra columns (not on the Struct) come last.
# A runner's write applies only while its own claim stands (see Store.finish_delivery).
_FENCE = "(? IS NULL OR (state = 'running' AND attempts = ?))"
# RECEIVER_<PROVIDER>_MAX_RUNNING (receiver.slots): a job is in flight at its provider
# from its insert until it ends, unless it waits for a slot.
_HOLD_FOR_SLOT = (
    "UPDATE jobs SET create_state = 'slot', create_request = ?, next_poll_at = ?,"
    " poll_worker_id = NULL, updated_at = ? WHERE id = ? AND status = 'queued'"
)
_ANY_WAITING_SLOT = "SELECT 1 FROM jobs WHERE provider = ? AND create_state = 'slot' LIMIT 1"
_IN_FLIGHT = (
    "SELECT COUNT(*) FROM jobs WHERE provider = ? AND status IN ('queued', 'running')"
    " AND (create_state IS NULL OR create_state <> 'slot')"
)
_NEXT_WAITING = (
    "SELECT id FROM jobs WHERE provider = ? AND create_state = 'slot' AND status = 'queued'"
    " ORDER BY created_at, id LIMIT ?"
)
_ADMIT = "UPDATE jobs SET create_state = 'waiting', next_poll_at = ?, updated_at = ? WHERE id = ?"
_SWITCH_PROVIDER = (
    "UPDATE jobs SET provider = ?, token_hash = ?, secret_hash = ?, create_state = NULL,"
    " updated_at = ? WHERE id = ? AND status = 'queued'"
)
_INSERT_JOB = _insert(
    "jobs",
    (
        *JOBS.columns,
        "token_hash",
        "secret_hash",
        "input",
        "next_poll_at",
        "preview_rank",
        "request_hash",
    ),
)
_INSERT_EVENT = _insert("events", (*EVENTS.columns, "payload_from", "dedupe_key"))
_INSERT_DELIVERY = _insert("deliveries", (*DELIVERIES.columns, "worker_id"))
_INSERT_REQUEST = _insert("requests", (*REQUESTS.columns, "job_id"))
# An answer to a request that is not stored (any more) is dropped: nothing would show it.
_SAVE_ANSWERS = (
    "INSERT INTO answers (request_id, status, ms) SELECT ?1, ?2, ?3"
    " WHERE EXISTS (SELECT 1 FROM requests WHERE id = ?1)"
    " ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, ms = excluded.ms"
)
_COUNT_REPLAYS = "UPDATE counters SET value = value + ? WHERE name = 'replays'"
_INSERT_QUARANTINE = _insert("quarantine", QUARANTINE.columns)
# Ids sort by time: everything from the (keep + 1)-th newest down, oldest first, `batch` at most.
_TRIM_QUARANTINE = (
    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine"
    " WHERE id <= (SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET ?)"
    " ORDER BY id LIMIT ?)"
)
# A job's deliveries, through its events (events_dedupe by job_id, then deliveries_event):
# the index on deliveries by job holds only unfinished ones (0011_lean_rows).
_OF_JOB = "event_id IN (SELECT id FROM events WHERE job_id = ?)"
_KEY_TAKEN = "SELECT 1 FROM jobs WHERE idempotency_key = ?"
# A job's requests: those its events came from (events_dedupe, then the requests' key)
# and the ones without an event, which name their job themselves (nudges; requests_job).
# Each with our answer to it, when it is known.
_JOB_REQUESTS = (
    f"SELECT {REQUESTS.select_as('r')}, a.status, a.ms FROM ("
    "  SELECT id FROM requests WHERE job_id = ?1"
    "  UNION ALL SELECT e.request_id FROM events e JOIN requests k ON k.id = e.request_id"
    "   WHERE e.job_id = ?1 AND k.job_id IS NULL) AS mine"
    " JOIN requests r ON r.id = mine.id LEFT JOIN answers a ON a.request_id = r.id"
    " ORDER BY r.id"
)


def _in_states(states: Iterable[DeliveryState]) -> str:
    """`(state = 'a' OR state = 'b')`, the states written out: SQLite uses a partial index by
    state (deliveries_dead, 0012_leaner_rows) only for a literal equality, not for IN or a
    bound value. The values are our enum's own."""
    terms = sorted(f"state = '{state.value}'" for state in states)
    return f"({' OR '.join(terms)})"


_JOB_BY_TOKEN = f"SELECT {JOBS.select}, secret_hash FROM jobs WHERE token_hash = ?"


def _token_match(row: Sequence[Any]) -> TokenMatch:
    return TokenMatch(job=JOBS.read(row), secret_hash=row[JOBS.width])


def _accepted_by_token(
    conn: sqlite3.Connection, token_hash: str, accept: Callable[[TokenMatch], bool]
) -> TokenMatch | None:
    """The job whose URL token hashes to `token_hash`, if there is one and `accept` takes it."""
    row = conn.execute(_JOB_BY_TOKEN, (token_hash,)).fetchone()
    if row is None:
        return None
    match = _token_match(row)
    return match if accept(match) else None


_INCREMENTAL = 2  # PRAGMA auto_vacuum's answer for INCREMENTAL


def metadata_path(key: str) -> str:
    """The SQLite JSON path of one top-level key, quoted so dots and brackets stay literal."""
    if '"' in key or "\\" in key:
        raise ValueError("a metadata key cannot contain quotes or backslashes")
    return f'$."{key}"'


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL, as SQLAlchemy reads them.

    `sqlite:///receiver.db` and `sqlite:///./receiver.db` are relative to the working
    directory, `sqlite:////var/lib/receiver.db` is absolute, `sqlite:///:memory:` is memory.
    """
    if not url.startswith("sqlite:///"):
        raise ConfigError("a SQLite URL looks like sqlite:///relative.db or sqlite:////abs.db")
    path = url.removeprefix("sqlite:///")
    if not path:
        raise ConfigError("RECEIVER_DATABASE_URL names no SQLite file")
    return path


def _create_private(path: Path) -> None:
    """Make the database file 0600 before SQLite does (it would make it 0644 under the usual
    umask); SQLite gives the -wal and -shm files the database file's own mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteStore(Store):
    """Store on one SQLite file (or `:memory:` for tests)."""

    def __init__(self, url: str = "sqlite:///./receiver.db", *, busy_timeout_ms: int = 5000):
        self.url = url
        self.path = sqlite_path(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._open = False
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # Connection and transactions

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                _create_private(Path(self.path))
            self._db = await self._connect(reader=False)
            # Takes effect at once on a new file (no table yet); see _incremental_vacuum.
            await self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            await self.db.execute("PRAGMA journal_mode = WAL")
            await self._migrate()
            await self._incremental_vacuum()
            if self.path != ":memory:":  # a second connection to :memory: is another database
                self._reader = await self._connect(reader=True)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        self._open = True

    async def _connect(self, *, reader: bool) -> aiosqlite.Connection:
        """A connection with our settings; the reader's can only read."""
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: a
        # group commit runs its statements on the event loop (see _commit).
        connection = await aiosqlite.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        try:
            await connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if reader:
                await connection.execute("PRAGMA query_only = ON")
            else:
                await connection.execute("PRAGMA synchronous = FULL")
                await connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    async def close(self) -> None:
        self._open = False
        for connection in (self._reader, self._db):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        self._db = self._reader = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("store is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _turn(self, lock: asyncio.Lock) -> AsyncIterator[None]:
        """Hold `lock`, waiting at most the busy timeout: a stuck file gives 503s, not a queue."""
        try:
            async with asyncio.timeout(self._busy_timeout_ms / 1000):
                await lock.acquire()
        except TimeoutError:
            raise StoreUnavailable("store busy: timed out waiting for the connection") from None
        try:
            yield
        finally:
            lock.release()

    async def _connection(self, *, reader: bool) -> aiosqlite.Connection:
        """The open connection of that kind, reopened if a fault dropped it."""
        current = self._reader if reader else self._db
        if current is not None:
            return current
        if not self._open:
            raise StoreUnavailable("store is not open")
        if reader and self.path == ":memory:":
            return self.db  # `:memory:` has no second connection
        try:
            connection = await self._connect(reader=reader)
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot reopen {self.path}: {exc}") from None
        log.warning("reopened the %s connection to %s", "read" if reader else "write", self.path)
        if reader:
            self._reader = connection
        else:
            self._db = connection
        return connection

    async def _drop(self, connection: aiosqlite.Connection, exc: BaseException) -> None:
        """Forget a connection a fault left unusable; the next use opens a new one."""
        if self.path == ":memory:":
            return  # the connection is the database: nothing to reopen
        log.warning("closing a %s connection after: %s", self.path, exc)
        with contextlib.suppress(Exception):
            await connection.close()
        if connection is self._db:
            self._db = None
        if connection is self._reader:
            self._reader = None

    async def _rollback(self, db: aiosqlite.Connection, exc: BaseException) -> None:
        """Undo a failed transaction; a connection that cannot get out of it is dropped."""
        try:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            clean = not db.in_transaction
        except Exception:
            clean = False
        if not clean or _breaks_connection(exc):
            await self._drop(db, exc)

    async def _migrate(self) -> None:
        # 0011 turns the stored dedupe keys into their digests: SQLite has no SHA-256.
        await self.db.create_function(
            "receiver_dedupe_digest", 1, dedupe_digest, deterministic=True
        )
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        async with self.db.execute("SELECT version FROM schema_migrations") as cursor:
            applied = {row[0] for row in await cursor.fetchall()}
        for migration in migrations("sqlite"):
            if migration.version in applied:
                continue
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.sql.split(";\n"):
                    if statement.strip():
                        await self.db.execute(statement)
                await self.db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, now()),
                )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def _incremental_vacuum(self) -> None:
        """Convert a file made before retention to auto_vacuum=INCREMENTAL, once.

        Pruned pages are reused either way; this lets `reclaim` also shrink the file. The
        change takes a VACUUM, which rewrites the file as one transaction: an interrupted
        one leaves the file as it was and the next start tries again. One that fails (a
        reader holding the file, no disk for the copy) is only logged.
        """
        async with self.db.execute("PRAGMA auto_vacuum") as cursor:
            row = await cursor.fetchone()
        if self.path == ":memory:" or row is None or row[0] == _INCREMENTAL:
            return
        log.warning("converting %s to incremental auto-vacuum: a one-time VACUUM", self.path)
        try:
            await self.db.execute("VACUUM")
            await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning(
                "%s not converted (%s): freed pages are reused, never returned", self.path, exc
            )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; any SQLite failure becomes StoreUnavailable."""
        async with self._turn(self._write_lock):
            db = await self._connection(reader=False)
            try:
                if db.in_transaction:  # left open by a failure we could not roll back
                    await db.execute("ROLLBACK")
                await db.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                if _is_fault(exc):
                    await self._rollback(db, exc)
                    raise StoreUnavailable(str(exc)) from None
                raise
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                await self._rollback(db, exc)
                if _is_fault(exc):
                    raise StoreUnavailable(str(exc)) from None
                raise

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the write connection, committed with whatever else is queued.

        Returns once the transaction holding it has committed; raises what `work` raised
        (its own changes rolled back, the batch's kept), or StoreUnavailable when the
        database failed and the whole batch with it.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit queued work, batch after batch, until the queue is empty.

        BEGIN (which may wait for another process's lock) and COMMIT (the fsync) run on the
        connection's thread; the batch's statements run here, on the event loop. They only
        touch SQLite's page cache, and running them on the writer thread instead costs a GIL
        handover per statement, which under load made a batch ten times slower.
        """
        try:
            while self._queue:
                batch: list[tuple[Work, asyncio.Future[Any]]] = []
                try:
                    async with self._turn(self._write_lock):
                        batch, self._queue = self._queue, []
                        outcomes = await self._commit([work for work, _ in batch])
                except BaseException as exc:
                    if not batch:  # no turn at the connection: all that waits for one fails
                        batch, self._queue = self._queue, []
                    error = StoreUnavailable(str(exc)) if _is_fault(exc) else exc
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller gave up; the work is committed all the same
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(
                            StoreUnavailable(str(value)) if _is_fault(value) else value
                        )
        finally:
            self._flusher = None

    async def _commit(self, works: list[Work]) -> list[tuple[bool, Any]]:
        """One transaction for the batch; one item's failure is its own.

        Items run bare first. If one fails, the batch is rolled back and run again with a
        savepoint per item: the common case pays no savepoint statements.
        """
        db = await self._connection(reader=False)
        # aiosqlite runs queued callables on its connection thread, in order.
        run: Callable[..., Awaitable[Any]] = db._execute
        try:
            conn: sqlite3.Connection = db._conn  # raises if the connection was closed
            if db.in_transaction:  # left open by a failure we could not roll back
                await run(conn.execute, "ROLLBACK")
            await run(conn.execute, "BEGIN IMMEDIATE")
            outcomes = _run_items(conn, works, isolated=False)
            if outcomes is None:
                conn.execute("ROLLBACK")
                await run(conn.execute, "BEGIN IMMEDIATE")
                outcomes = _run_items(conn, works, isolated=True) or []
            await run(conn.execute, "COMMIT")
        except BaseException as exc:
            await self._rollback(db, exc)
            raise
        return outcomes

    async def _fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]:
        """A read on the reading connection: committed data only."""
        async with self._turn(self._read_lock):
            reader = await self._connection(reader=True)
            try:
                async with reader.execute(sql, params) as cursor:
                    return list(await cursor.fetchall())
            except Exception as exc:
                if _is_fault(exc):
                    if _breaks_connection(exc) and reader is not self._db:
                        await self._drop(reader, exc)
                    raise StoreUnavailable(str(exc)) from None
                raise

    async def _fetchone(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # Jobs

    async def create_job(self, new: NewJob) -> bool:
        key = new.job.idempotency_key

        def work(conn: sqlite3.Connection) -> bool:
            # Checked in the write transaction, which holds the database's only write lock.
            if key is not None and conn.execute(_KEY_TAKEN, (key,)).fetchone() is not None:
                return False
            _insert_within_budgets(conn, new)  # the budget check and the insert, in one step
            return True

        return await self._write(work)

    async def defer_create(self, job_id: str, fields: Mapping[str, Any], at: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET create_state = 'waiting', create_request = ?, next_poll_at = ?,"
                " poll_worker_id = NULL, updated_at = ? WHERE id = ?",
                (to_json(dict(fields)), at, now(), job_id),
            )

    async def begin_create_retry(
        self, job_id: str, *, token_hash: str, secret_hash: str | None, next_poll_at: float
    ) -> dict[str, Any] | None:
        def work(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT create_request FROM jobs WHERE id = ? AND create_state = 'waiting'"
                " AND status = 'queued'",
                (job_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            conn.execute(
                "UPDATE jobs SET create_state = 'uncertain', create_request = NULL,"
                " token_hash = ?, secret_hash = ?, next_poll_at = ?, updated_at = ? WHERE id = ?",
                (token_hash, secret_hash, next_poll_at, now(), job_id),
            )
            return _json_object(row[0])

        return await self._write(work)

    async def hold_for_slot(
        self, job_id: str, fields: Mapping[str, Any], give_up_at: float
    ) -> None:
        async with self._transaction() as db:
            await db.execute(_HOLD_FOR_SLOT, (to_json(dict(fields)), give_up_at, now(), job_id))

    async def admit_creates(self, provider: str, cap: int, *, at: float, lease: float) -> list[str]:
        if await self._fetchone(_ANY_WAITING_SLOT, (provider,)) is None:
            return []  # the common case, and the periodic sweep's: no write lock taken

        def work(conn: sqlite3.Connection) -> list[str]:
            # The write transaction holds the database's only write lock: one admitter at a time.
            (running,) = conn.execute(_IN_FLIGHT, (provider,)).fetchone()
            if running >= cap:
                return []
            ids = [
                row[0] for row in conn.execute(_NEXT_WAITING, (provider, cap - running)).fetchall()
            ]
            conn.executemany(_ADMIT, [(at + lease, at, job_id) for job_id in ids])
            return ids

        return await self._write(work)

    async def switch_provider(
        self, job_id: str, provider: str, *, token_hash: str, secret_hash: str | None
    ) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                _SWITCH_PROVIDER, (provider, token_hash, secret_hash, now(), job_id)
            )
            return cursor.rowcount == 1

    async def job_by_idempotency_key(self, key: str) -> KeyedJob | None:
        row = await self._fetchone(
            f"SELECT {JOBS.select}, request_hash FROM jobs WHERE idempotency_key = ?", (key,)
        )
        return KeyedJob(job=JOBS.read(row), request_hash=row[JOBS.width]) if row else None

    async def set_create_state(
        self, job_id: str, state: str | None, next_poll_at: float | None
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET create_state = ?, next_poll_at = CASE WHEN next_poll_at IS NULL"
                " THEN ? WHEN ? IS NULL THEN next_poll_at ELSE MIN(next_poll_at, ?) END,"
                " updated_at = ? WHERE id = ?",
                (state, next_poll_at, next_poll_at, next_poll_at, now(), job_id),
            )

    async def spend(self, *, since: float = 0.0, by: str | None = None) -> list[Spend]:
        value = "metadata ->> ?" if by is not None else "NULL"
        params: list[Any] = [metadata_path(by)] if by is not None else []
        rows = await self._fetchall(_spend_query(value), (*params, spend_bound(since), since))
        return [spend_row(row) for row in rows]

    async def set_task_id(self, job_id: str, task_id: str, next_poll_at: float | None) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET task_id = ?, next_poll_at = CASE WHEN next_poll_at IS NULL"
                " THEN ? WHEN ? IS NULL THEN next_poll_at ELSE MIN(next_poll_at, ?) END,"
                " updated_at = ? WHERE id = ?",
                (task_id, next_poll_at, next_poll_at, next_poll_at, now(), job_id),
            )

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchone(f"SELECT {JOBS.select} FROM jobs WHERE id = ?", (job_id,))
        return JOBS.read(row) if row else None

    async def job_by_token(self, token_hash: str) -> TokenMatch | None:
        row = await self._fetchone(_JOB_BY_TOKEN, (token_hash,))
        return _token_match(row) if row else None

    async def job_by_task(self, provider: str, task_id: str) -> Job | None:
        row = await self._fetchone(
            f"SELECT {JOBS.select} FROM jobs WHERE provider = ? AND task_id = ?",
            (provider, task_id),
        )
        return JOBS.read(row) if row else None

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> JobPage:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("provider", provider), ("task_id", task_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if status is not None:
            clauses += list_status_terms(status)
        for key, candidates in (metadata or {}).items():
            # The key goes in as a bound JSON path, quoted, so no key can change the query.
            marks = ", ".join("?" * len(candidates))
            clauses.append(f"metadata -> ? IN ({marks})")
            params.extend((metadata_path(key), *candidates))
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetchall(
            f"SELECT {JOBS.select} FROM jobs {where} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        )
        items = [JOBS.read(row) for row in rows[:limit]]
        return JobPage(items=items, next=items[-1].id if len(rows) > limit else None)

    async def save_file(self, job_id: str, name: str, file: StoredFile) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET files = json_set(files, ?, json(?)) WHERE id = ?",
                (metadata_path(name), to_json(file), job_id),
            )

    # Dashboard sessions

    async def create_session(self, key: str, *, at: float, expires_at: float) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (at,))
            await db.execute(
                "INSERT INTO sessions (key, created_at, expires_at) VALUES (?, ?, ?)",
                (key, at, expires_at),
            )

    async def session_alive(self, key: str, *, at: float) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM sessions WHERE key = ? AND expires_at > ?", (key, at)
        )
        return row is not None

    async def delete_session(self, key: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM sessions WHERE key = ?", (key,))

    async def list_events(self, job_id: str, *, limit: int = 1000) -> list[Event]:
        rows = await self._fetchall(
            f"SELECT {EVENT_SELECT} FROM events e WHERE e.job_id = ? ORDER BY e.seq LIMIT ?",
            (job_id, limit),
        )
        return [read_event(row) for row in rows]

    # The hot path

    async def record(self, write: Write, *, route: Router, claim: Claim | None = None) -> Recorded:
        return await self._write(
            functools.partial(_record, write=write, job_id=write.job_id, route=route, claim=claim)
        )

    async def record_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        write: Write,
        *,
        route: Router,
        claim: Claim | None = None,
    ) -> Recorded | None:
        # The lookup rides in the same batch as the write: a read of its own first would
        # serialize callbacks on the reading connection, and batches would stop forming.
        def work(conn: sqlite3.Connection) -> Recorded | None:
            match = _accepted_by_token(conn, token_hash, accept)
            if match is None:
                return None
            return _record(conn, write=write, job_id=match.job.id, route=route, claim=claim)

        return await self._write(work)

    async def record_nudge(self, job_id: str, raw: RawRequest, *, poll_at: float) -> None:
        await self._write(functools.partial(_nudge, job_id=job_id, raw=raw, poll_at=poll_at))

    async def record_nudge_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        raw: RawRequest,
        *,
        poll_at: float,
    ) -> Job | None:
        # In the write, as `record_by_token`: no read of its own first.
        def work(conn: sqlite3.Connection) -> Job | None:
            match = _accepted_by_token(conn, token_hash, accept)
            if match is None:
                return None
            _nudge(conn, job_id=match.job.id, raw=raw, poll_at=poll_at)
            return match.job

        return await self._write(work)

    async def quarantine(self, entry: Quarantined) -> None:
        await self._write(lambda conn: conn.execute(_INSERT_QUARANTINE, QUARANTINE.values(entry)))

    async def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]:
        rows = await self._fetchall(
            f"SELECT {QUARANTINE.select} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [QUARANTINE.read(row) for row in rows]

    async def trim_quarantine(self, *, keep: int, batch: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(_TRIM_QUARANTINE, (keep, batch)).rowcount

        return await self._write(work)

    async def list_requests(self, job_id: str) -> list[RawRequest]:
        rows = await self._fetchall(
            _JOB_REQUESTS,
            (job_id,),
        )
        return [ANSWERED_REQUESTS.read(row) for row in rows]

    async def save_answers(self, answers: Sequence[AnswerNote]) -> None:
        if not answers:
            return
        rows = [(note.request_id, note.status, note.latency_ms) for note in answers]
        # Group-committed with the callbacks' own writes: the batch shares their fsync.
        await self._write(lambda conn: conn.executemany(_SAVE_ANSWERS, rows))

    # Deliveries

    async def claim_deliveries(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Claimed]:
        return await self._write(
            functools.partial(_claim, limit=limit, lease=lease, at=at, worker=worker)
        )

    async def set_delivery_state(
        self,
        delivery_id: str,
        state: DeliveryState,
        *,
        error: str | None,
        next_attempt_at: float | None,
        at: float,
        attempt: int | None,
    ) -> None:
        params = (state.value, error, next_attempt_at, at, delivery_id, attempt, attempt)
        await self._write(lambda conn: conn.execute(_SET_DELIVERY, params))

    async def release_delivery(
        self, delivery_id: str, *, at: float, attempt: int | None = None
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = MAX(0, attempts - 1),"
                " next_attempt_at = ?, lease_until = NULL, worker_id = NULL, updated_at = ?"
                f" WHERE id = ? AND state = 'running' AND {_FENCE}",
                (at, at, delivery_id, attempt, attempt),
            )

    async def renew_lease(
        self, delivery_id: str, *, lease_until: float, attempt: int | None = None
    ) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET lease_until = ?"
                f" WHERE id = ? AND state = 'running' AND {_FENCE}",
                (lease_until, delivery_id, attempt, attempt),
            )
            return cursor.rowcount > 0

    async def release_running(self) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL"
                " WHERE state = 'running'"
            )
            return cursor.rowcount

    async def next_delivery_at(self) -> float | None:
        # Only deliveries that claim_deliveries would take: one waiting behind an unfinished
        # sibling is not due, or the runner would spin until the sibling's retry.
        row = await self._fetchone(
            "SELECT (SELECT d.next_attempt_at FROM deliveries d WHERE d.state = 'pending'"
            "  AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id"
            "   AND e.handler = d.handler AND e.seq < d.seq AND e.state IN ('pending', 'running'))"
            "  ORDER BY d.next_attempt_at LIMIT 1),"
            " (SELECT MIN(lease_until) FROM deliveries WHERE state = 'running')"
        )
        due = [t for t in row if t is not None] if row else []
        return min(due) if due else None

    async def list_deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]:
        clauses, params = [], []
        if job_id is not None:
            clauses.append(_OF_JOB)
            params.append(job_id)
        if state is not None:
            clauses.append(_in_states([state]))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetchall(
            f"SELECT {DELIVERIES.select} FROM deliveries {where} ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [DELIVERIES.read(row) for row in rows]

    async def replay_deliveries(
        self,
        *,
        delivery_id: str | None = None,
        job_id: str | None = None,
        handler: str | None = None,
        states: frozenset[DeliveryState] = frozenset({DeliveryState.DEAD}),
        at: float,
    ) -> list[Delivery]:
        finished = [s for s in states if s in (DeliveryState.DEAD, DeliveryState.DONE)]
        if not finished:
            return []
        clauses = [_in_states(finished)]
        params: list[Any] = []
        for clause, value in (("id = ?", delivery_id), (_OF_JOB, job_id), ("handler = ?", handler)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        async with self._transaction() as db:
            async with db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                f" lease_until = NULL, updated_at = ? WHERE {' AND '.join(clauses)}"
                f" RETURNING seq, {DELIVERIES.select}",
                (at, at, *params),
            ) as cursor:
                rows = sorted(await cursor.fetchall())
            if rows:
                await db.execute(_COUNT_REPLAYS, (len(rows),))
        return [DELIVERIES.read(row[1:]) for row in rows]

    async def replay_count(self) -> int:
        row = await self._fetchone("SELECT value FROM counters WHERE name = 'replays'")
        return int(row[0]) if row else 0

    async def delivery_summary(self) -> DeliverySummary:
        rows = await self._fetchall(
            "SELECT state, COUNT(*), MIN(CASE WHEN state = 'pending' THEN created_at END)"
            " FROM deliveries GROUP BY state"
        )
        counts = {state.value: 0 for state in DeliveryState}
        oldest: float | None = None
        for state, count, first in rows:
            counts[state] = count
            if first is not None:
                oldest = first
        return DeliverySummary(counts=counts, oldest_pending_at=oldest)

    async def job_counts(self) -> dict[str, int]:
        return job_counts_of(await self._fetchall(JOB_COUNTS))

    # Polls

    async def claim_polls(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Job]:
        async with (
            self._transaction() as db,
            db.execute(
                "UPDATE jobs SET next_poll_at = ?, poll_worker_id = ? WHERE id IN ("
                "  SELECT id FROM jobs WHERE next_poll_at <= ?"
                "  AND (task_id IS NOT NULL OR create_state IS NOT NULL)"
                "  AND status IN ('queued', 'running') ORDER BY next_poll_at LIMIT ?)"
                f" AND {_REGISTERED}"
                f" RETURNING {JOBS.select}",
                (at + lease, worker, at, limit, worker, worker),
            ) as cursor,
        ):
            return [JOBS.read(row) for row in await cursor.fetchall()]

    async def schedule_poll(self, job_id: str, at: float | None, *, attempted: bool) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET next_poll_at = CASE WHEN status IN ('queued', 'running')"
                " THEN ? END, poll_attempts = poll_attempts + ?, poll_worker_id = NULL"
                " WHERE id = ?",
                (at, 1 if attempted else 0, job_id),
            )

    async def schedule_unscheduled_polls(self, provider: str, *, deadline: float) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET next_poll_at = updated_at + ? WHERE provider = ?"
                " AND status IN ('queued', 'running') AND task_id IS NOT NULL"
                " AND next_poll_at IS NULL",
                (deadline, provider),
            )
            return cursor.rowcount

    async def next_poll_at(self) -> float | None:
        row = await self._fetchone(
            "SELECT MIN(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL"
            " AND (task_id IS NOT NULL OR create_state IS NOT NULL)"
            " AND status IN ('queued', 'running')"
        )
        return row[0] if row else None

    # Retention

    async def prune(
        self, *, before: float, limit: int, dry_run: bool = False, jobs: bool = False
    ) -> dict[str, int]:
        if dry_run:
            return await self._prunable(before, jobs=jobs)
        # One table per write, each a short item of the group commit: callbacks queued
        # meanwhile commit between them instead of waiting for the whole batch.
        counts = await self._write(functools.partial(_prune_events, before=before, limit=limit))
        for table, sql in (("requests", _PRUNE_REQUESTS), ("quarantine", _PRUNE_QUARANTINE)):
            counts[table] = await self._write(
                functools.partial(_delete, sql=sql, before=before, limit=limit)
            )
        counts["jobs"] = (
            await self._write(
                functools.partial(_delete, sql=_PRUNE_JOBS, before=before, limit=limit)
            )
            if jobs
            else 0
        )
        return counts

    async def _prunable(self, before: float, *, jobs: bool) -> dict[str, int]:
        """What `prune` would delete, counted on the reading connection."""
        counts = {}
        for table, sql in _COUNT_PRUNABLE.items():
            if table != "jobs" or jobs:
                row = await self._fetchone(sql, _prune_params(sql, before, keep_from=before))
                counts[table] = int(row[0])
        counts.setdefault("jobs", 0)
        return counts

    async def reclaim(self, pages: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            free: int = conn.execute("PRAGMA freelist_count").fetchone()[0]
            # One page per statement: Python's sqlite3 steps a pragma once, and
            # incremental_vacuum frees one page per step.
            for _ in range(min(pages, free)):
                conn.execute("PRAGMA incremental_vacuum(1)")
            left: int = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return left

        return await self._write(work)

    # Workers (this file has one process; the rows still say who leased what)

    async def register_worker(self, worker: Worker) -> Worker:
        at = now()
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO workers"
                " (id, host, pid, pid_scope, timeout, started_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET heartbeat_at = excluded.heartbeat_at, timeout = excluded.timeout",
                (worker.id, worker.host, worker.pid, worker.pid_scope, worker.timeout, at, at),
            )
            async with db.execute(f"{_WORKERS} WHERE id = ?", (worker.id,)) as cursor:
                row = await cursor.fetchone()
        assert row is not None  # written in this very transaction
        return _worker(row)

    async def heartbeat(self, worker_id: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now(), worker_id)
            )
            return cursor.rowcount > 0

    async def list_workers(self) -> list[Worker]:
        rows = await self._fetchall(f"{_WORKERS} ORDER BY started_at, id")
        return [_worker(row) for row in rows]

    async def reap_workers(
        self, *, late: bool = True, dead: Sequence[str] = (), at: float
    ) -> Reaped:
        marks = ", ".join("?" * len(dead))
        async with self._transaction() as db:
            async with db.execute(
                f"DELETE FROM workers WHERE (? AND heartbeat_at < ? - timeout)"
                f" OR id IN ({marks}) RETURNING id",
                (late, now(), *dead),
            ) as cursor:
                gone = sorted(row[0] for row in await cursor.fetchall())
            # The gone rows are deleted already: "no row" covers them and any orphans.
            freed = await db.execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, updated_at = ?,"
                " last_error = 'worker ' || worker_id || ' stopped; taken over', worker_id = NULL"
                f" WHERE state = 'running' AND worker_id IS NOT NULL AND NOT {_HAS_WORKER}",
                (at,),
            )
            polled = await db.execute(
                "UPDATE jobs SET poll_worker_id = NULL,"
                " next_poll_at = CASE WHEN next_poll_at > ? THEN ? ELSE next_poll_at END"
                " WHERE poll_worker_id IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM workers w WHERE w.id = jobs.poll_worker_id)",
                (at, at),
            )
        return Reaped(workers=gone, deliveries=freed.rowcount, polls=polled.rowcount)


_WORKERS = "SELECT id, host, pid, pid_scope, timeout, started_at, heartbeat_at FROM workers"
_HAS_WORKER = "EXISTS (SELECT 1 FROM workers w WHERE w.id = deliveries.worker_id)"


def _worker(row: Sequence[Any]) -> Worker:
    worker_id, host, pid, pid_scope, timeout, started_at, heartbeat_at = row
    return Worker(
        id=worker_id,
        host=host,
        pid=pid,
        pid_scope=pid_scope,
        timeout=timeout,
        started_at=started_at,
        heartbeat_at=heartbeat_at,
    )


# Work run on the write connection's thread, inside a batch's transaction (see `_write`).

# The lease ends, and the worker's stamp with it (only running rows are ever asked whose
# they are): a finished row keeps no worker id (0011_lean_rows).
_SET_DELIVERY = (
    "UPDATE deliveries SET state = ?, last_error = COALESCE(?, last_error),"
    " next_attempt_at = COALESCE(?, next_attempt_at), lease_until = NULL, worker_id = NULL,"
    f" updated_at = ? WHERE id = ? AND {_FENCE}"
)


def _run_items(
    conn: sqlite3.Connection, works: list[Work], *, isolated: bool
) -> list[tuple[bool, Any]] | None:
    """Each item's (ok, value or error); bare items give None at the first failure."""
    outcomes: list[tuple[bool, Any]] = []
    for work in works:
        if not isolated:
            try:
                outcomes.append((True, work(conn)))
            except _ITEM_ERRORS:
                return None
            continue
        conn.execute("SAVEPOINT item")
        try:
            value = work(conn)
        except _ITEM_ERRORS as exc:
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            outcomes.append((False, exc))
        else:
            conn.execute("RELEASE item")
            outcomes.append((True, value))
    return outcomes


def _insert_job(
    conn: sqlite3.Connection,
    new: NewJob,
    state: Job | None = None,
    preview_rank: float = -1.0,
    next_poll_at: float | None = None,
) -> None:
    """Insert `new`, or its first `state` when an update created it (see `_record`)."""
    job, poll_at = new.job, new.next_poll_at
    if state is not None:  # as `_save_job_state` would leave it
        job = state
        poll_at = (
            None if job.status.terminal else (poll_at if next_poll_at is None else next_poll_at)
        )
    conn.execute(
        _INSERT_JOB,
        (
            *JOBS.values(job),
            new.token_hash,
            new.secret_hash,
            to_json(new.input),
            poll_at,
            preview_rank,
            new.request_hash,
        ),
    )


def _json_object(text: str) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(text)
    return value


_SPENT = f"SELECT SUM(COALESCE(cost, estimated_cost)) FROM jobs WHERE created_at >= ? AND {PRICED}"


def _spend_query(value: str) -> str:
    """spend()'s query: every job created since a time, walked by id (rows.spend_bound).
    `+provider` keeps the planner from reading every job in jobs_provider's order for the
    grouping instead, as it did before 0014_fewer_indexes."""
    return (
        f"SELECT provider, CAST(created_at / {DAY} AS INTEGER) AS day, {value} AS value,"
        " COUNT(*), SUM(estimated_cost), SUM(COALESCE(cost, estimated_cost))"
        " FROM jobs WHERE id >= ? AND created_at >= ? GROUP BY +provider, day, value"
        " ORDER BY day, provider, value"
    )


def _insert_within_budgets(conn: sqlite3.Connection, new: NewJob) -> None:
    """Insert `new` unless its estimate would pass one of its budgets (BudgetExceeded)."""
    if new.budgets:
        since = day_start(new.job.created_at)
        spent = []
        for budget in new.budgets:
            sql, params = _SPENT, list[Any]([since])
            if budget.key is not None:
                sql += " AND metadata -> ? = ?"
                params += [metadata_path(budget.key), to_json(budget.value)]
            spent.append(conn.execute(sql, params).fetchone()[0] or 0.0)
        check_budgets(list(new.budgets), spent, new.job.estimated_cost or 0.0)
    _insert_job(conn, new)


def _insert_request(conn: sqlite3.Connection, raw: RawRequest, job_id: str | None) -> None:
    conn.execute(_INSERT_REQUEST, (*REQUESTS.values(raw), job_id))


def _nudge(conn: sqlite3.Connection, *, job_id: str, raw: RawRequest, poll_at: float) -> None:
    """Keep a nudge's raw request and have the job polled at `poll_at` while it is open."""
    _insert_request(conn, raw, job_id)
    conn.execute(
        "UPDATE jobs SET next_poll_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        (poll_at, job_id),
    )


def _record(
    conn: sqlite3.Connection,
    *,
    write: Write,
    job_id: str | None,
    route: Router,
    claim: Claim | None,
) -> Recorded:
    """Store one write to the job `job_id` (or `write.new_job`): raw request, event, job
    state and deliveries (see Store.record)."""
    job, rank, created = _job_for_update(conn, job_id, write.new_job)
    key = dedupe_key_of(job, write.update)
    duplicate = not created and (  # a job inserted just now has no events yet
        conn.execute(
            "SELECT 1 FROM events WHERE job_id = ? AND dedupe_key = ? LIMIT 1", (job.id, key)
        ).fetchone()
        is not None
    )
    recorded, transition = apply_write(
        job,
        rank,
        created,
        write,
        duplicate=duplicate,
        route=route,
        claim=claim,
        claimable=functools.partial(_nothing_unfinished, conn, job.id) if claim else None,
    )
    after, next_poll_at, raw = recorded.job, write.next_poll_at, write.raw
    if created and write.new_job is not None:
        # A job this update creates is inserted as the update leaves it: one statement.
        _insert_job(conn, write.new_job, after, transition.preview_rank, next_poll_at)
    elif transition.changed:
        _save_job_state(conn, after, transition.preview_rank, next_poll_at)
    elif next_poll_at is not None and not after.status.terminal:
        # Nothing new (a poll that saw the same state): only the next poll moves.
        conn.execute(
            "UPDATE jobs SET next_poll_at = ?, poll_worker_id = NULL WHERE id = ?",
            (next_poll_at, job.id),
        )
    if raw is not None:  # its job is its event's (0012_leaner_rows): no job id of its own
        _insert_request(conn, raw, None)
    body = raw.body if raw is not None else None
    conn.execute(_INSERT_EVENT, (*event_values(recorded.event, body), key))
    for delivery in recorded.deliveries:
        conn.execute(_INSERT_DELIVERY, (*DELIVERIES.values(delivery), claimer(delivery, claim)))
    return recorded


def _nothing_unfinished(conn: sqlite3.Connection, job_id: str, handler: str) -> bool:
    """Whether no delivery of the job for the handler is pending or running."""
    return conn.execute(_UNFINISHED, (job_id, handler)).fetchone() is None


# An unfinished delivery of a job for a handler: a new one must wait for it.
_UNFINISHED = (
    "SELECT 1 FROM deliveries WHERE job_id = ? AND handler = ?"
    " AND state IN ('pending', 'running') LIMIT 1"
)


def _job_for_update(
    conn: sqlite3.Connection, job_id: str | None, new_job: NewJob | None
) -> tuple[Job, float, bool]:
    """The job an update is about, its preview's rank, and if it is new (not yet inserted)."""
    params: tuple[str, ...]
    if job_id is not None:
        where, params = "id = ?", (job_id,)
    elif new_job is not None and new_job.job.task_id is not None:
        where = "provider = ? AND task_id = ?"
        params = (new_job.job.provider, new_job.job.task_id)
    else:
        raise ValueError("record() needs a job id or a new job with a task id")
    row = conn.execute(
        f"SELECT {JOBS.select}, preview_rank FROM jobs WHERE {where}", params
    ).fetchone()
    if row is not None:
        return JOBS.read(row), row[JOBS.width], False
    if job_id is not None or new_job is None:
        raise LookupError(f"no job {job_id}")
    return new_job.job, -1.0, True


def _save_job_state(
    conn: sqlite3.Connection, job: Job, preview_rank: float, next_poll_at: float | None
) -> None:
    """Write the job's new state; a terminal job is never polled again."""
    terminal = job.status.terminal
    conn.execute(
        _SAVE_JOB_STATE,
        (
            *job_state_values(job, preview_rank),
            terminal,
            next_poll_at,
            terminal,
            next_poll_at,
            job.id,
        ),
    )


_SAVE_JOB_STATE = (
    f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in JOB_STATE_COLUMNS)},"
    " next_poll_at = CASE WHEN ? THEN NULL ELSE COALESCE(?, next_poll_at) END,"
    # A poll's outcome (a new schedule, or the end of the job) ends its lease.
    " poll_worker_id = CASE WHEN ? OR ? IS NOT NULL THEN NULL ELSE poll_worker_id END"
    " WHERE id = ?"
)


# Due pending deliveries in order, walking the (state, next_attempt_at, seq) index and
# stopping at `limit`: a delivery waits while an earlier one of the same job and handler
# is unfinished, which is what keeps one job's events in order for each handler.
_DUE_PENDING = (
    "SELECT d.seq, d.next_attempt_at FROM deliveries d"
    " WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id"
    "  AND e.handler = d.handler AND e.seq < d.seq AND e.state IN ('pending', 'running'))"
    " ORDER BY d.next_attempt_at, d.seq LIMIT ?"
)
_WORKER_ROW = "SELECT 1 FROM workers WHERE id = ?"
# A claim for a worker whose row is gone (declared dead) takes nothing.
_REGISTERED = "(? IS NULL OR EXISTS (SELECT 1 FROM workers WHERE id = ?))"
# A lease that ran out belongs to a runner that died: take it over.
_LAPSED = (
    "SELECT seq, lease_until FROM deliveries WHERE state = 'running' AND lease_until < ?"
    " ORDER BY lease_until, seq LIMIT ?"
)


def _claim(
    conn: sqlite3.Connection, *, limit: int, lease: float, at: float, worker: str | None = None
) -> list[Claimed]:
    """Lease due deliveries with their events and jobs (see Store.claim_deliveries)."""
    if worker is not None and conn.execute(_WORKER_ROW, (worker,)).fetchone() is None:
        return []  # declared dead: it takes nothing until it registers again
    candidates = conn.execute(_DUE_PENDING, (at, limit)).fetchall()
    candidates += conn.execute(_LAPSED, (at, limit)).fetchall()
    seqs = [seq for seq, _ in sorted(candidates, key=lambda c: (c[1], c[0]))[:limit]]
    if not seqs:
        return []
    rows = conn.execute(
        "UPDATE deliveries SET state = 'running', attempts = attempts + 1,"
        " lease_until = ?, updated_at = ?, worker_id = ?"
        f" WHERE seq IN ({', '.join('?' * len(seqs))})"
        f" RETURNING seq, {DELIVERIES.select}",
        (at + lease, at, worker, *seqs),
    ).fetchall()
    order = {seq: position for position, seq in enumerate(seqs)}
    deliveries = [DELIVERIES.read(row[1:]) for row in sorted(rows, key=lambda r: order[r[0]])]
    if not deliveries:
        return []
    # Each delivery's event and job, read together in one query.
    marks = ", ".join("?" * len(deliveries))
    by_event = {
        row[0]: (read_event(row), JOBS.read(row[EVENT_WIDTH:]))
        for row in conn.execute(
            f"SELECT {EVENT_SELECT}, {JOBS.select_as('j')}"
            f" FROM events e JOIN jobs j ON j.id = e.job_id WHERE e.id IN ({marks})",
            [delivery.event_id for delivery in deliveries],
        )
    }
    return [
        Claimed(delivery=d, event=by_event[d.event_id][0], job=by_event[d.event_id][1])
        for d in deliveries
    ]


# Retention (see Store.prune). A job's rows may go once it ended before the cutoff and no
# delivery of it is unfinished. Events and requests are walked by id (0014_fewer_indexes):
# an id begins with the millisecond it was minted, so the ids below the cutoff's first one
# (:events_below, :requests_below) hold every row received before it, and received_at
# still decides. A row whose id was minted after its received_at (none is, as the hooks
# and event_of mint them) would only be kept longer, till a later pass: never pruned early.
_ENDED = (
    "j.status IN ('succeeded', 'failed', 'cancelled') AND j.updated_at < :before"
    " AND NOT EXISTS (SELECT 1 FROM deliveries u WHERE u.job_id = j.id"
    "  AND u.state IN ('pending', 'running'))"
)
# The job is looked up per event (EXISTS, not a join): a join let the planner walk every
# ended job instead of the events past the cutoff.
_PRUNABLE_EVENTS = (
    "FROM events e WHERE e.id < :events_below AND e.received_at < :before"
    f" AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id AND {_ENDED})"
)
# A request's job: its own (a nudge's) or its event's (0012_leaner_rows).
_REQUEST_JOB = "COALESCE(r.job_id, (SELECT min(k.job_id) FROM events k WHERE k.request_id = r.id))"
# A request referred to by an event stays until the event goes. `keep_from` is -inf when
# deleting (any event keeps it), the cutoff when counting (an event that will stay keeps it).
_PRUNABLE_REQUESTS = (
    f"FROM requests r LEFT JOIN jobs j ON j.id = {_REQUEST_JOB}"
    " WHERE r.id < :requests_below AND r.received_at < :before"
    f" AND (j.id IS NULL OR ({_ENDED}))"
    " AND NOT EXISTS (SELECT 1 FROM events k WHERE k.request_id = r.id"
    "  AND k.received_at >= :keep_from)"
)
_PRUNABLE_QUARANTINE = "FROM quarantine WHERE received_at < :before"
# The partial index of ended jobs by age: the planner preferred the one by status, which
# made it read and sort every ended job on each batch.
_PRUNABLE_JOBS = (
    f"FROM jobs j INDEXED BY jobs_ended WHERE {_ENDED}"
    " AND NOT EXISTS (SELECT 1 FROM events k WHERE k.job_id = j.id"
    "  AND k.received_at >= :keep_from)"
    " AND NOT EXISTS (SELECT 1 FROM requests k WHERE k.job_id = j.id"
    "  AND k.received_at >= :keep_from)"
)
_PICK_EVENTS = f"SELECT e.id {_PRUNABLE_EVENTS} ORDER BY e.id LIMIT :limit"
_PRUNE_REQUESTS = (
    f"DELETE FROM requests WHERE id IN (SELECT r.id {_PRUNABLE_REQUESTS}"
    " ORDER BY r.id LIMIT :limit)"
)
_PRUNE_QUARANTINE = (
    f"DELETE FROM quarantine WHERE id IN (SELECT id {_PRUNABLE_QUARANTINE}"
    " ORDER BY received_at LIMIT :limit)"
)
_PRUNE_JOBS = (
    f"DELETE FROM jobs WHERE id IN (SELECT j.id {_PRUNABLE_JOBS}"
    " ORDER BY j.updated_at LIMIT :limit)"
)
_COUNT_PRUNABLE = {
    "deliveries": "SELECT COUNT(*) FROM deliveries d WHERE d.event_id IN"
    f" (SELECT e.id {_PRUNABLE_EVENTS})",
    "events": f"SELECT COUNT(*) {_PRUNABLE_EVENTS}",
    "requests": f"SELECT COUNT(*) {_PRUNABLE_REQUESTS}",
    "quarantine": f"SELECT COUNT(*) {_PRUNABLE_QUARANTINE}",
    "jobs": f"SELECT COUNT(*) {_PRUNABLE_JOBS}",
}


def _prune_params(
    sql: str, before: float, *, limit: int = 0, keep_from: float = -math.inf
) -> dict[str, Any]:
    """The named parameters `sql` uses, of the ones a pruning statement may take."""
    given = prune_values(before, limit=limit, keep_from=keep_from)
    return {name: value for name, value in given.items() if f":{name}" in sql}


def _prune_events(conn: sqlite3.Connection, *, before: float, limit: int) -> dict[str, int]:
    """Delete up to `limit` prunable events, oldest first, with their deliveries."""
    ids = [
        row[0]
        for row in conn.execute(_PICK_EVENTS, _prune_params(_PICK_EVENTS, before, limit=limit))
    ]
    if not ids:
        return {"deliveries": 0, "events": 0}
    marks = ", ".join("?" * len(ids))
    deliveries = conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
    events = conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
    return {"deliveries": deliveries.rowcount, "events": events.rowcount}


def _delete(conn: sqlite3.Connection, sql: str, before: float, limit: int) -> int:
    """Run one pruning DELETE; how many rows it removed."""
    return int(conn.execute(sql, _prune_params(sql, before, limit=limit)).rowcount)
