"""The embedded default store: one SQLite file in WAL mode, through aiosqlite.

Writes go through one connection, serialised by an asyncio lock around `BEGIN
IMMEDIATE` transactions, so the state machine always reads the job it is about to
change. Reads use a second connection, so they never see a transaction in progress
(WAL lets them run beside the writer). `synchronous=FULL` makes every acknowledged
commit survive a power cut, not only a killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.errors import ConfigError, StoreUnavailable
from receiver.models import (
    Delivery,
    DeliveryState,
    Disposition,
    Event,
    Job,
    Quarantined,
    RawRequest,
    Update,
    new_id,
    now,
)
from receiver.state import advance, dedupe_key
from receiver.store.base import (
    Claimed,
    JobPage,
    NewJob,
    Recorded,
    Router,
    Store,
    TokenMatch,
)
from receiver.store.migrations import migrations
from receiver.store.rows import DELIVERIES, EVENTS, JOBS, QUARANTINE, REQUESTS, to_json

__all__ = ["SQLiteStore", "sqlite_path"]


def _is_fault(exc: BaseException) -> bool:
    """A failing database, or one closed under a caller (aiosqlite then raises ValueError)."""
    if isinstance(exc, sqlite3.Error):
        return True
    return isinstance(exc, ValueError) and "no active connection" in str(exc)


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# Built once: the hot path only binds values. Extra columns (not on the Struct) come last.
_INSERT_JOB = _insert("jobs", (*JOBS.columns, "token_hash", "secret_hash", "input", "next_poll_at"))
_INSERT_EVENT = _insert("events", (*EVENTS.columns, "dedupe_key"))
_INSERT_DELIVERY = _insert("deliveries", DELIVERIES.columns)
_INSERT_REQUEST = _insert("requests", (*REQUESTS.columns, "job_id"))
_INSERT_QUARANTINE = _insert("quarantine", QUARANTINE.columns)


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


class SQLiteStore(Store):
    """Store on one SQLite file (or `:memory:` for tests)."""

    def __init__(self, url: str = "sqlite:///./receiver.db", *, busy_timeout_ms: int = 5000):
        self.url = url
        self.path = sqlite_path(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # Connection and transactions

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = FULL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
            if self.path != ":memory:":  # a second connection to :memory: is another database
                self._reader = await aiosqlite.connect(self.path, isolation_level=None)
                await self._reader.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                await self._reader.execute("PRAGMA query_only = ON")
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None

    async def close(self) -> None:
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

    async def _migrate(self) -> None:
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

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; any SQLite failure becomes StoreUnavailable."""
        async with self._write_lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                if _is_fault(exc):
                    raise StoreUnavailable(str(exc)) from None
                raise
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                if _is_fault(exc):
                    raise StoreUnavailable(str(exc)) from None
                raise

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read on the reading connection: committed data only."""
        reader = self._reader or self.db
        try:
            async with reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except Exception as exc:
            if _is_fault(exc):
                raise StoreUnavailable(str(exc)) from None
            raise

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # Jobs

    async def create_job(self, new: NewJob) -> None:
        async with self._transaction() as db:
            await self._insert_job(db, new)

    async def _insert_job(self, db: aiosqlite.Connection, new: NewJob) -> None:
        await db.execute(
            _INSERT_JOB,
            (
                *JOBS.values(new.job),
                new.token_hash,
                new.secret_hash,
                to_json(new.input),
                new.next_poll_at,
            ),
        )

    async def set_task_id(self, job_id: str, task_id: str, next_poll_at: float | None) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET task_id = ?, next_poll_at = ?, updated_at = ? WHERE id = ?",
                (task_id, next_poll_at, now(), job_id),
            )

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchone(f"SELECT {JOBS.select} FROM jobs WHERE id = ?", (job_id,))
        return JOBS.read(row) if row else None

    async def job_by_token(self, token_hash: str) -> TokenMatch | None:
        row = await self._fetchone(
            f"SELECT {JOBS.select}, secret_hash FROM jobs WHERE token_hash = ?", (token_hash,)
        )
        return TokenMatch(job=JOBS.read(row), secret_hash=row[JOBS.width]) if row else None

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
    ) -> JobPage:
        clauses, params = [], []
        for column, value in (("status", status), ("provider", provider), ("task_id", task_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
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

    async def list_events(self, job_id: str, *, limit: int = 1000) -> list[Event]:
        rows = await self._fetchall(
            f"SELECT {EVENTS.select} FROM events WHERE job_id = ? ORDER BY seq LIMIT ?",
            (job_id, limit),
        )
        return [EVENTS.read(row) for row in rows]

    # The hot path

    async def record(
        self,
        job_id: str | None,
        update: Update,
        *,
        source: str,
        route: Router,
        raw: RawRequest | None = None,
        new_job: NewJob | None = None,
        next_poll_at: float | None = None,
        at: float | None = None,
    ) -> Recorded:
        at = now() if at is None else at
        async with self._transaction() as db:
            job, rank = await self._job_for_update(db, job_id, new_job)
            if raw is not None:
                await self._insert_request(db, raw, job.id)
            key = dedupe_key(job.provider, job.task_id or update.task_id, update)
            async with db.execute(
                "SELECT 1 FROM events WHERE job_id = ? AND dedupe_key = ? LIMIT 1", (job.id, key)
            ) as cursor:
                duplicate = await cursor.fetchone() is not None
            transition = advance(job, update, duplicate=duplicate, at=at, preview_from=rank)
            event = Event(
                id=new_id("evt"),
                job_id=job.id,
                provider=job.provider,
                task_id=update.task_id or job.task_id,
                status=update.status,
                raw_status=update.raw_status,
                progress=update.progress,
                result_url=update.result_url,
                preview_url=update.preview_url,
                error=update.error,
                error_code=update.error_code,
                source=source,
                disposition=transition.disposition,
                received_at=at,
                request_id=raw.id if raw is not None else None,
                payload=update.payload,
            )
            await db.execute(_INSERT_EVENT, (*EVENTS.values(event), key))
            after = transition.job
            if transition.changed:
                await self._save_job_state(db, after, transition.preview_rank, next_poll_at)
            elif next_poll_at is not None and not after.status.terminal:
                # Nothing new (a poll that saw the same state): only the next poll moves.
                await db.execute(
                    "UPDATE jobs SET next_poll_at = ? WHERE id = ?", (next_poll_at, job.id)
                )
            deliveries: list[Delivery] = []
            if transition.disposition is Disposition.APPLIED:
                for handler in route(event, after):
                    delivery = Delivery(
                        id=new_id("dlv"),
                        event_id=event.id,
                        job_id=job.id,
                        handler=handler,
                        state=DeliveryState.PENDING,
                        next_attempt_at=at,
                        created_at=at,
                        updated_at=at,
                    )
                    await db.execute(_INSERT_DELIVERY, DELIVERIES.values(delivery))
                    deliveries.append(delivery)
        return Recorded(event=event, job=after, deliveries=deliveries)

    async def _job_for_update(
        self, db: aiosqlite.Connection, job_id: str | None, new_job: NewJob | None
    ) -> tuple[Job, float]:
        """The job an update is about (inserted if new), with its preview's rank."""
        params: tuple[str, ...]
        if job_id is not None:
            where, params = "id = ?", (job_id,)
        elif new_job is not None and new_job.job.task_id is not None:
            where = "provider = ? AND task_id = ?"
            params = (new_job.job.provider, new_job.job.task_id)
        else:
            raise ValueError("record() needs a job id or a new job with a task id")
        async with db.execute(
            f"SELECT {JOBS.select}, preview_rank FROM jobs WHERE {where}", params
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            return JOBS.read(row), row[JOBS.width]
        if job_id is not None or new_job is None:
            raise LookupError(f"no job {job_id}")
        await self._insert_job(db, new_job)
        return new_job.job, -1.0

    async def _save_job_state(
        self, db: aiosqlite.Connection, job: Job, preview_rank: float, next_poll_at: float | None
    ) -> None:
        """Write the job's new state; a terminal job is never polled again."""
        await db.execute(
            "UPDATE jobs SET task_id = ?, status = ?, raw_status = ?, progress = ?, result_url = ?,"
            " preview_url = ?, preview_rank = ?, error = ?, error_code = ?, updated_at = ?,"
            " next_poll_at = CASE WHEN ? THEN NULL ELSE COALESCE(?, next_poll_at) END"
            " WHERE id = ?",
            (
                job.task_id,
                job.status.value,
                job.raw_status,
                job.progress,
                job.result_url,
                job.preview_url,
                preview_rank,
                job.error,
                job.error_code,
                job.updated_at,
                job.status.terminal,
                next_poll_at,
                job.id,
            ),
        )

    async def record_nudge(self, job_id: str, raw: RawRequest, *, poll_at: float) -> None:
        async with self._transaction() as db:
            await self._insert_request(db, raw, job_id)
            await db.execute(
                "UPDATE jobs SET next_poll_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (poll_at, job_id),
            )

    async def _insert_request(
        self, db: aiosqlite.Connection, raw: RawRequest, job_id: str | None
    ) -> None:
        await db.execute(_INSERT_REQUEST, (*REQUESTS.values(raw), job_id))

    async def quarantine(self, entry: Quarantined) -> None:
        async with self._transaction() as db:
            await db.execute(_INSERT_QUARANTINE, QUARANTINE.values(entry))

    async def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]:
        rows = await self._fetchall(
            f"SELECT {QUARANTINE.select} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [QUARANTINE.read(row) for row in rows]

    async def list_requests(self, job_id: str) -> list[RawRequest]:
        rows = await self._fetchall(
            f"SELECT {REQUESTS.select} FROM requests WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [REQUESTS.read(row) for row in rows]

    # Deliveries

    async def claim_deliveries(self, *, limit: int, lease: float, at: float) -> list[Claimed]:
        async with self._transaction() as db:
            # A delivery waits while an earlier one of the same job and handler is unfinished:
            # that is what keeps one job's events in order for each handler.
            async with db.execute(
                "UPDATE deliveries SET state = 'running', attempts = attempts + 1,"
                " lease_until = ?, updated_at = ? WHERE seq IN ("
                "  SELECT seq FROM ("
                "   SELECT d.seq, d.next_attempt_at AS due FROM deliveries d"
                "    WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
                "    AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id"
                "     AND e.handler = d.handler AND e.seq < d.seq"
                "     AND e.state IN ('pending', 'running'))"
                "   UNION ALL"
                # A lease that ran out belongs to a runner that died: take it over.
                "   SELECT d.seq, d.lease_until AS due FROM deliveries d"
                "    WHERE d.state = 'running' AND d.lease_until < ?"
                "  ) ORDER BY due, seq LIMIT ?)"
                f" RETURNING {DELIVERIES.select}",
                (at + lease, at, at, at, limit),
            ) as cursor:
                deliveries = [DELIVERIES.read(row) for row in await cursor.fetchall()]
            if not deliveries:
                return []
            # Each delivery's event and job, read together in one query.
            marks = ", ".join("?" * len(deliveries))
            async with db.execute(
                f"SELECT {EVENTS.select_as('e')}, {JOBS.select_as('j')}"
                f" FROM events e JOIN jobs j ON j.id = e.job_id WHERE e.id IN ({marks})",
                [delivery.event_id for delivery in deliveries],
            ) as cursor:
                by_event = {
                    row[0]: (EVENTS.read(row), JOBS.read(row[EVENTS.width :]))
                    for row in await cursor.fetchall()
                }
        return [
            Claimed(delivery=d, event=by_event[d.event_id][0], job=by_event[d.event_id][1])
            for d in deliveries
        ]

    async def finish_delivery(self, delivery_id: str, *, at: float) -> None:
        await self._set_delivery(delivery_id, DeliveryState.DONE, None, None, at)

    async def retry_delivery(
        self, delivery_id: str, *, error: str, next_attempt_at: float, at: float
    ) -> None:
        await self._set_delivery(delivery_id, DeliveryState.PENDING, error, next_attempt_at, at)

    async def kill_delivery(self, delivery_id: str, *, error: str, at: float) -> None:
        await self._set_delivery(delivery_id, DeliveryState.DEAD, error, None, at)

    async def _set_delivery(
        self,
        delivery_id: str,
        state: DeliveryState,
        error: str | None,
        next_attempt_at: float | None,
        at: float,
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deliveries SET state = ?, last_error = COALESCE(?, last_error),"
                " next_attempt_at = COALESCE(?, next_attempt_at), lease_until = NULL,"
                " updated_at = ? WHERE id = ?",
                (state.value, error, next_attempt_at, at, delivery_id),
            )

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
            "SELECT MIN(due) FROM ("
            " SELECT MIN(d.next_attempt_at) AS due FROM deliveries d WHERE d.state = 'pending'"
            "  AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id"
            "   AND e.handler = d.handler AND e.seq < d.seq AND e.state IN ('pending', 'running'))"
            " UNION ALL"
            " SELECT MIN(lease_until) FROM deliveries WHERE state = 'running')"
        )
        return row[0] if row else None

    async def list_deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]:
        clauses, params = [], []
        if job_id is not None:
            clauses.append("job_id = ?")
            params.append(job_id)
        if state is not None:
            clauses.append("state = ?")
            params.append(state.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetchall(
            f"SELECT {DELIVERIES.select} FROM deliveries {where} ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [DELIVERIES.read(row) for row in rows]

    # Polls

    async def claim_polls(self, *, limit: int, lease: float, at: float) -> list[Job]:
        async with (
            self._transaction() as db,
            db.execute(
                "UPDATE jobs SET next_poll_at = ? WHERE id IN ("
                "  SELECT id FROM jobs WHERE next_poll_at <= ? AND task_id IS NOT NULL"
                "  AND status IN ('queued', 'running') ORDER BY next_poll_at LIMIT ?)"
                f" RETURNING {JOBS.select}",
                (at + lease, at, limit),
            ) as cursor,
        ):
            return [JOBS.read(row) for row in await cursor.fetchall()]

    async def schedule_poll(self, job_id: str, at: float | None, *, attempted: bool) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET next_poll_at = CASE WHEN status IN ('queued', 'running')"
                " THEN ? END, poll_attempts = poll_attempts + ? WHERE id = ?",
                (at, 1 if attempted else 0, job_id),
            )

    async def next_poll_at(self) -> float | None:
        row = await self._fetchone(
            "SELECT MIN(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL"
            " AND task_id IS NOT NULL AND status IN ('queued', 'running')"
        )
        return row[0] if row else None
