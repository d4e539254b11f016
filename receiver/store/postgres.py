"""The scale-out store: PostgreSQL through an asyncpg pool, shared by many processes.

Same semantics as the SQLite store, made safe for several receivers and workers at
once: `record` locks the job row (`FOR UPDATE`) so the state machine reads the job it
changes; deliveries and polls are claimed with `FOR UPDATE SKIP LOCKED` under a lease;
`NOTIFY` in the committing transaction wakes idle workers in every process at once.
The schema is applied by `receiver migrate` (`migrate()`), never implicitly: `open()`
only checks that it is current, so a rolling deploy cannot race on DDL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Hashable,
    Mapping,
    Sequence,
)
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

from receiver.costs import DAY, Spend, check_budgets, day_start, spend_row
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
from receiver.store.batcher import GroupCommit, Outcome
from receiver.store.migrations import migrations
from receiver.store.pg_batch import (
    DELIVERIES_CHANNEL,
    POLLS_CHANNEL,
    DeliveryWrite,
    Nudge,
    Record,
    set_delivery_states,
    write_batch,
)
from receiver.store.rows import (
    ANSWERED_REQUESTS,
    DELIVERIES,
    EVENT_SELECT,
    EVENT_WIDTH,
    JOB_COUNTS,
    JOBS,
    PRICED,
    QUARANTINE,
    REQUESTS,
    job_counts_of,
    list_status_terms,
    prune_values,
    read_event,
    spend_bound,
    to_json,
)

__all__ = [
    "BATCH_SIZE",
    "DELIVERIES_CHANNEL",
    "POLLS_CHANNEL",
    "PostgresStore",
    "is_fault",
    "pool_options",
]

log = logging.getLogger("receiver.store.postgres")

# Callbacks committed together at most (the URL's `batch_size`), and how many batches
# of one process may be in flight at once, each on a connection of its own (see
# receiver.store.batcher for why two), leaving the pool at least `_SPARE` connections for
# deliveries' outcomes, claims, polls and reads.
BATCH_SIZE = 64
_FLIGHTS = 2
_SPARE = 2
# Any fixed 64-bit number: the session lock that keeps two `receiver migrate` apart.
_MIGRATE_LOCK = 0x7265636569766572

# SQLSTATE classes that mean "the database cannot serve this now", not "this is wrong":
# connection exceptions, insufficient resources (too many connections), operator
# intervention (shutdown, statement timeout, cannot connect now), system errors, and
# transaction rollbacks (serialization failure, deadlock): all worth a retry later.
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58", "40"})


def is_fault(exc: BaseException) -> bool:
    """Whether `exc` is the database being unreachable or overloaded (a 503), not a bug."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        # A connection whose server went away mid-operation can be left in a state
        # asyncpg refuses to use ("another operation is in progress").
        return True
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return True  # waited lock_timeout for a row another session holds
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _TRANSIENT_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "closed" in text or "closing" in text or "not open" in text
    return False


def pool_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split our own query options off a database URL: the DSN for asyncpg, and pool settings.

    `pool_size` (default 10), `pool_min` (1), `pool_timeout` (seconds to wait for a
    free connection, default 5) and `batch_size` (callbacks committed together at most,
    default 64) are ours; every other query parameter, such as
    `statement_timeout` (milliseconds, default 30000) and `lock_timeout` (milliseconds,
    default 5000), is passed to the server by asyncpg.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    try:
        options = {
            "max_size": int(query.pop("pool_size", "10")),
            "min_size": int(query.pop("pool_min", "1")),
            "timeout": float(query.pop("pool_timeout", "5")),
            "batch_size": int(query.pop("batch_size", str(BATCH_SIZE))),
        }
    except ValueError:
        raise ConfigError(
            "RECEIVER_DATABASE_URL: pool_size, pool_min, pool_timeout and batch_size"
            " must be numbers"
        ) from None
    if options["max_size"] < 1 or options["min_size"] > options["max_size"]:
        raise ConfigError("RECEIVER_DATABASE_URL: need 1 <= pool_min <= pool_size")
    if options["batch_size"] < 1:
        raise ConfigError("RECEIVER_DATABASE_URL: batch_size must be at least 1")
    query.setdefault("statement_timeout", "30000")
    # A row another session keeps locked (an operator's open transaction) stalls a batch
    # this long at most, not the whole statement_timeout: see `_split_on`.
    query.setdefault("lock_timeout", "5000")
    return urlunsplit(parts._replace(query=urlencode(query))), options


class PostgresStore(Store):
    """Store on a PostgreSQL database; any number of processes may share it."""

    shared = True

    def __init__(self, url: str):
        self.url = url
        self._dsn, options = pool_options(url)
        self._pool_size: int = options["max_size"]
        self._pool_min: int = options["min_size"]
        self._acquire_timeout: float = options["timeout"]
        # Deliveries (id, attempt) whose handler has run to its end here (done or dead)
        # while that outcome's write has not committed: no longer unfinished for a claim
        # at record time (pg_batch._look_up). On SQLite the one write queue commits the
        # outcome before a later record reads.
        self._finishing: Counter[tuple[str, int]] = Counter()
        # Ingest writes (record, record_by_token, record_nudge) are group-committed.
        self._batches: GroupCommit[Record | Nudge] = GroupCommit(
            functools.partial(
                self._commit_group, functools.partial(_ingest, finishing=self._finishing)
            ),
            limit=options["batch_size"],
            flights=max(1, min(_FLIGHTS, self._pool_size - _SPARE)),
            key=_job_named,
        )
        # So are deliveries' outcomes: a runner finishing a handler answers nobody outside.
        self._outcomes: GroupCommit[DeliveryWrite] = GroupCommit(
            functools.partial(self._commit_group, set_delivery_states),
            limit=options["batch_size"],
        )
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        # Heartbeats have a connection of their own (see `_beating`).
        self._beat: asyncpg.Connection | None = None
        self._beat_lock = asyncio.Lock()

    # Connection, schema and transactions

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncio.wait_for(asyncpg.connect(self._dsn), self._acquire_timeout + 5)
        except Exception as exc:
            if is_fault(exc) or isinstance(exc, asyncpg.PostgresError):
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
            raise

    async def open(self) -> None:
        """Connect the pool and check the schema; a schema behind the code is a ConfigError."""
        await self.check_schema()
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._pool_min, max_size=self._pool_size, reset=_keep_session
            )
        except Exception as exc:
            if is_fault(exc) or isinstance(exc, asyncpg.PostgresError):
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
            raise

    async def close(self) -> None:
        await self._batches.close()
        await self._outcomes.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._beat is not None:
            beat, self._beat = self._beat, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(beat.close(), 2)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:  # a dead server cannot say goodbye; drop the sockets
                pool.terminate()

    async def applied_migrations(self) -> set[int]:
        """The versions of the migrations applied to the database (none for an empty one)."""
        connection = await self._connect()
        try:
            exists = await connection.fetchval("SELECT to_regclass('schema_migrations')")
            if exists is None:
                return set()
            rows = await connection.fetch("SELECT version FROM schema_migrations")
            return {int(row[0]) for row in rows}
        except Exception as exc:
            if is_fault(exc):
                raise StoreUnavailable(str(exc)) from None
            raise
        finally:
            await connection.close()

    async def schema_version(self) -> int:
        """The highest migration applied to the database (0 for an empty database)."""
        return max(await self.applied_migrations(), default=0)

    async def check_schema(self) -> None:
        """Raise ConfigError, in one line, when migrations are pending.

        Pending is any known migration not applied, not only those past the highest
        applied one: a migration merged below a newer one must not be skipped.
        """
        known = migrations("postgres")
        applied = await self.applied_migrations()
        pending = [m for m in known if m.version not in applied]
        if pending:
            names = ", ".join(f"{m.version:04d}" for m in pending)
            raise ConfigError(
                f"the PostgreSQL schema lacks migration {names}, this receiver needs"
                f" {known[-1].version}: run `receiver migrate` first"
            )

    async def migrate(self) -> list[str]:
        """Apply the pending migrations, each in its own transaction; return their names."""
        connection = await self._connect()
        applied: list[str] = []
        try:
            await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {
                row[0] for row in await connection.fetch("SELECT version FROM schema_migrations")
            }
            for migration in migrations("postgres"):
                if migration.version in done:
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        now(),
                    )
                applied.append(migration.name)
        except Exception as exc:
            if is_fault(exc):
                raise StoreUnavailable(str(exc)) from None
            raise
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        return applied

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database faults become StoreUnavailable, and a connection
        broken by one is dropped rather than handed back to the pool."""
        try:
            async with self.pool.acquire(timeout=self._acquire_timeout) as connection:
                try:
                    yield connection
                except Exception as exc:
                    _drop_if_broken(connection, exc)
                    raise
        except Exception as exc:
            if is_fault(exc):
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
            raise

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction on a pooled connection (see `_connection`)."""
        async with self._connection() as connection, connection.transaction():
            yield connection

    # A single statement commits by itself: one round trip where an explicit transaction
    # takes three (BEGIN, the statement, COMMIT).

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        async with self._connection() as connection:
            return list(await connection.fetch(sql, *params))

    async def _execute(self, sql: str, *params: Any) -> str:
        """A single write statement; asyncpg's status answer, such as "UPDATE 1"."""
        async with self._connection() as connection:
            status: str = await connection.execute(sql, *params)
        return status

    async def _fetchrow(self, sql: str, *params: Any) -> Any:
        rows = await self._fetch(sql, *params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def _beating(self) -> AsyncIterator[asyncpg.Connection]:
        """This process's heartbeat connection, outside the pool: a pool kept busy by
        ingest must not make a live worker miss its heartbeats and be declared dead.

        Made on first use and again after a fault; one caller at a time.
        """
        async with self._beat_lock:
            if self._beat is None or self._beat.is_closed():
                self._beat = await self._connect()
            connection = self._beat
            try:
                yield connection
            except BaseException as exc:
                # Cut off mid-statement (a timeout), a connection cannot be trusted again.
                if is_fault(exc) or not isinstance(exc, Exception):
                    connection.terminate()
                    self._beat = None
                if is_fault(exc):
                    raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
                raise

    # Waking other processes

    async def listen(self, wake: Mapping[str, Callable[[], None]]) -> None:
        """Call `wake["deliveries"]` / `wake["polls"]` whenever any process commits such work.

        One connection outside the pool LISTENs; when it drops (a server restart) it is
        made again, and every callback is called once, since notices may have been missed.
        """
        channels = {
            channel: wake[kind]
            for kind, channel in (("deliveries", DELIVERIES_CHANNEL), ("polls", POLLS_CHANNEL))
            if kind in wake
        }
        if channels and self._listener is None:
            self._listener = asyncio.create_task(self._listen(channels), name="pg-listen")

    async def _listen(self, channels: Mapping[str, Callable[[], None]]) -> None:
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await self._connect()
                for channel, callback in channels.items():
                    await connection.add_listener(channel, _callback(callback))
                if failures:
                    log.info("listening for notifications again")
                failures = 0
                for callback in channels.values():
                    callback()
                while not connection.is_closed():
                    await asyncio.sleep(2.0)
                    # A server that vanished without closing the socket shows up here.
                    await asyncio.wait_for(connection.fetchval("SELECT 1"), 5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("notification listener lost its connection: %s", exc)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2)
            await asyncio.sleep(min(5.0, 0.2 * 2**failures))

    # Jobs

    async def create_job(self, new: NewJob) -> bool:
        async with self._transaction() as db:
            await self._check_budgets(db, new)
            inserted = await self._insert_job(db, new)
            if inserted and new.next_poll_at is not None and new.job.task_id is not None:
                await db.execute("SELECT pg_notify($1, '')", POLLS_CHANNEL)
            return inserted

    async def _check_budgets(self, db: asyncpg.Connection, new: NewJob) -> None:
        """BudgetExceeded if `new` would pass a budget; its budgets stay locked until commit.

        A transaction-scoped advisory lock per budget (taken in one order, so two jobs
        never deadlock) makes a second submission wait for the first's commit and then
        count it: both cannot fit in room for one.
        """
        if not new.budgets:
            return
        since = day_start(new.job.created_at)
        spent = []
        for budget in new.budgets:
            await db.execute("SELECT pg_advisory_xact_lock($1)", _budget_lock(budget.name))
            if budget.key is None:
                total = await db.fetchval(_SPENT, since)
            else:
                total = await db.fetchval(
                    _SPENT + " AND (metadata::jsonb -> $2)::text = $3",
                    since,
                    budget.key,
                    to_json(budget.value),
                )
            spent.append(float(total or 0.0))
        check_budgets(list(new.budgets), spent, new.job.estimated_cost or 0.0)

    async def spend(self, *, since: float = 0.0, by: str | None = None) -> list[Spend]:
        value = "metadata::jsonb ->> $3" if by is not None else "NULL::text"
        rows = await self._fetch(
            _spend_query(value), since, spend_bound(since), *([by] if by is not None else [])
        )
        return [spend_row(row) for row in rows]

    async def _insert_job(self, db: asyncpg.Connection, new: NewJob) -> bool:
        # A concurrent insert with the same key waits for the first to commit, then skips.
        inserted = await db.fetchval(
            _INSERT_JOB + " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL"
            " DO NOTHING RETURNING true",
            *JOBS.values(new.job),
            new.token_hash,
            new.secret_hash,
            to_json(new.input),
            new.next_poll_at,
            new.request_hash,
        )
        return bool(inserted)

    async def defer_create(self, job_id: str, fields: Mapping[str, Any], at: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET create_state = 'waiting', create_request = $1,"
                " next_poll_at = $2, poll_worker_id = NULL, updated_at = $3 WHERE id = $4",
                to_json(dict(fields)),
                at,
                now(),
                job_id,
            )
            await db.execute("SELECT pg_notify($1, '')", POLLS_CHANNEL)

    async def begin_create_retry(
        self, job_id: str, *, token_hash: str, secret_hash: str | None, next_poll_at: float
    ) -> dict[str, Any] | None:
        async with self._transaction() as db:
            kept = await db.fetchval(
                "UPDATE jobs SET create_state = 'uncertain', create_request = NULL,"
                " token_hash = $1, secret_hash = $2, next_poll_at = $3, updated_at = $4"
                " FROM (SELECT id, create_request AS kept FROM jobs WHERE id = $5"
                "  AND create_state = 'waiting' AND status = 'queued' FOR UPDATE) AS old"
                " WHERE jobs.id = old.id RETURNING old.kept",
                token_hash,
                secret_hash,
                next_poll_at,
                now(),
                job_id,
            )
        if kept is None:
            return None
        fields: dict[str, Any] = msgspec.json.decode(kept)
        return fields

    async def hold_for_slot(
        self, job_id: str, fields: Mapping[str, Any], give_up_at: float
    ) -> None:
        await self._execute(_HOLD_FOR_SLOT, to_json(dict(fields)), give_up_at, now(), job_id)

    async def admit_creates(self, provider: str, cap: int, *, at: float, lease: float) -> list[str]:
        if await self._fetchrow(_ANY_WAITING_SLOT, provider) is None:
            return []  # the common case, and the periodic sweep's: no lock taken
        async with self._transaction() as db:
            # Held to the commit: the count and the admission are one step for every process.
            await db.execute("SELECT pg_advisory_xact_lock($1)", _slot_lock(provider))
            running = await db.fetchval(_IN_FLIGHT, provider)
            if running >= cap:
                return []
            rows = await db.fetch(_ADMIT, provider, cap - running, at + lease, at)
        return [row["id"] for row in sorted(rows, key=lambda row: (row["created_at"], row["id"]))]

    async def switch_provider(
        self, job_id: str, provider: str, *, token_hash: str, secret_hash: str | None
    ) -> bool:
        status = await self._execute(
            _SWITCH_PROVIDER, provider, token_hash, secret_hash, now(), job_id
        )
        return status == "UPDATE 1"

    async def job_by_idempotency_key(self, key: str) -> KeyedJob | None:
        row = await self._fetchrow(
            f"SELECT {JOBS.select}, request_hash FROM jobs WHERE idempotency_key = $1", key
        )
        return KeyedJob(job=JOBS.read(row), request_hash=row[JOBS.width]) if row else None

    async def set_create_state(
        self, job_id: str, state: str | None, next_poll_at: float | None
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET create_state = $1,"
                " next_poll_at = LEAST(next_poll_at, $2::double precision),"
                " updated_at = $3 WHERE id = $4",
                state,
                next_poll_at,
                now(),
                job_id,
            )
            if next_poll_at is not None:
                await db.execute("SELECT pg_notify($1, '')", POLLS_CHANNEL)

    async def set_task_id(self, job_id: str, task_id: str, next_poll_at: float | None) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET task_id = $1, next_poll_at = LEAST(next_poll_at, $2),"
                " updated_at = $3 WHERE id = $4",
                task_id,
                next_poll_at,
                now(),
                job_id,
            )
            if next_poll_at is not None:
                await db.execute("SELECT pg_notify($1, '')", POLLS_CHANNEL)

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchrow(f"SELECT {JOBS.select} FROM jobs WHERE id = $1", job_id)
        return JOBS.read(row) if row else None

    async def job_by_token(self, token_hash: str) -> TokenMatch | None:
        row = await self._fetchrow(
            f"SELECT {JOBS.select}, secret_hash FROM jobs WHERE token_hash = $1", token_hash
        )
        return TokenMatch(job=JOBS.read(row), secret_hash=row[JOBS.width]) if row else None

    async def job_by_task(self, provider: str, task_id: str) -> Job | None:
        row = await self._fetchrow(
            f"SELECT {JOBS.select} FROM jobs WHERE provider = $1 AND task_id = $2",
            provider,
            task_id,
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
                params.append(value)
                clauses.append(f"{column} = ${len(params)}")
        if status is not None:
            clauses += list_status_terms(status)
        for key, candidates in (metadata or {}).items():
            # Key and values are bound; a scalar's jsonb text is its JSON, as the SQLite `->` gives.
            params.extend((key, list(candidates)))
            clauses.append(
                f"(metadata::jsonb -> ${len(params) - 1})::text = ANY(${len(params)}::text[])"
            )
        if before is not None:
            params.append(before)
            clauses.append(f"id < ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit + 1)
        rows = await self._fetch(
            f"SELECT {JOBS.select} FROM jobs {where} ORDER BY id DESC LIMIT ${len(params)}",
            *params,
        )
        items = [JOBS.read(row) for row in rows[:limit]]
        return JobPage(items=items, next=items[-1].id if len(rows) > limit else None)

    async def save_file(self, job_id: str, name: str, file: StoredFile) -> None:
        await self._execute(
            "UPDATE jobs SET files = jsonb_set(files::jsonb, ARRAY[$1::text], $2::jsonb)::text"
            " WHERE id = $3",
            name,
            to_json(file),
            job_id,
        )

    # Dashboard sessions

    async def create_session(self, key: str, *, at: float, expires_at: float) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM sessions WHERE expires_at <= $1", at)
            await db.execute(
                "INSERT INTO sessions (key, created_at, expires_at) VALUES ($1, $2, $3)",
                key,
                at,
                expires_at,
            )

    async def session_alive(self, key: str, *, at: float) -> bool:
        row = await self._fetchrow(
            "SELECT 1 FROM sessions WHERE key = $1 AND expires_at > $2", key, at
        )
        return row is not None

    async def delete_session(self, key: str) -> None:
        await self._execute("DELETE FROM sessions WHERE key = $1", key)

    async def list_events(self, job_id: str, *, limit: int = 1000) -> list[Event]:
        rows = await self._fetch(
            f"SELECT {EVENT_SELECT} FROM events e WHERE e.job_id = $1 ORDER BY e.seq LIMIT $2",
            job_id,
            limit,
        )
        return [read_event(row) for row in rows]

    # The hot path

    async def record(self, write: Write, *, route: Router, claim: Claim | None = None) -> Recorded:
        recorded: Recorded = await self._batches.submit(
            Record(write=write, route=route, claim=claim)
        )
        return recorded

    async def record_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        write: Write,
        *,
        route: Router,
        claim: Claim | None = None,
    ) -> Recorded | None:
        # The lookup is the batch's own lock of the job: no read of its own first.
        recorded: Recorded | None = await self._batches.submit(
            Record(write=write, route=route, claim=claim, token_hash=token_hash, accept=accept)
        )
        return recorded

    async def record_nudge(self, job_id: str, raw: RawRequest, *, poll_at: float) -> None:
        await self._batches.submit(Nudge(job_id=job_id, raw=raw, poll_at=poll_at))

    async def record_nudge_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        raw: RawRequest,
        *,
        poll_at: float,
    ) -> Job | None:
        # The lookup is the batch's own lock of the job, as for `record_by_token`.
        nudged: Job | None = await self._batches.submit(
            Nudge(token_hash=token_hash, accept=accept, raw=raw, poll_at=poll_at)
        )
        return nudged

    async def _commit_group(self, run: _Run, items: list[Any]) -> list[Outcome]:
        """Commit a group of items with `run`; one Outcome per item.

        When the group fails for a reason one item may have caused (a row the database
        refuses, a job another process inserted meanwhile, a deadlock), it is rolled back
        and each item runs again alone, so that item fails by itself. When the database
        fails (unreachable, a commit lost), every caller hears StoreUnavailable.
        """
        if len(items) > 1:
            outcomes = await self._try_group(run, items)
            if outcomes is not None:
                return outcomes
        return [await self._alone(run, item) for item in items]

    async def _try_group(self, run: _Run, items: Sequence[Any]) -> list[Outcome] | None:
        """The group's outcomes; None if it was rolled back for an error worth splitting."""
        async with self._connection() as db:
            try:
                return await run(db, items)
            except Exception as exc:
                if len(items) > 1 and _split_on(exc):
                    log.info("group of %d rolled back (%s); each item alone", len(items), exc)
                    return None
                raise

    async def _alone(self, run: _Run, item: Any) -> Outcome:
        """One item by itself; a race on a new job's insert is retried."""
        for attempt in range(3):
            try:
                outcomes = await self._try_group(run, [item])
            except asyncpg.UniqueViolationError as exc:
                if attempt == 2:
                    return False, exc
                continue  # another process inserted the job: it is there to lock now
            except Exception as exc:
                return False, exc
            return outcomes[0] if outcomes else (False, StoreUnavailable("no outcome"))
        raise AssertionError("unreachable")

    async def quarantine(self, entry: Quarantined) -> None:
        await self._execute(_INSERT_QUARANTINE, *QUARANTINE.values(entry))

    async def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]:
        rows = await self._fetch(
            f"SELECT {QUARANTINE.select} FROM quarantine ORDER BY id DESC LIMIT $1", limit
        )
        return [QUARANTINE.read(row) for row in rows]

    async def trim_quarantine(self, *, keep: int, batch: int) -> int:
        status = await self._execute(_TRIM_QUARANTINE, keep, batch)
        return int(status.split()[-1])  # "DELETE <count>"

    async def list_requests(self, job_id: str) -> list[RawRequest]:
        rows = await self._fetch(
            _JOB_REQUESTS,
            job_id,
        )
        return [ANSWERED_REQUESTS.read(row) for row in rows]

    async def save_answers(self, answers: Sequence[AnswerNote]) -> None:
        if not answers:
            return
        ids, statuses, latencies = zip(*answers, strict=True)
        await self._execute(_SAVE_ANSWERS, list(ids), list(statuses), list(latencies))

    # Deliveries

    async def claim_deliveries(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Claimed]:
        finishing = list(self._finishing)
        rows = await self._fetch(
            _CLAIM_DELIVERIES,
            at + lease,
            at,
            limit,
            worker,
            [delivery_id for delivery_id, _ in finishing],
            [attempt for _, attempt in finishing],
        )
        width = DELIVERIES.width
        return [
            Claimed(
                delivery=DELIVERIES.read(row),
                event=read_event(tuple(row)[width : width + EVENT_WIDTH]),
                job=JOBS.read(tuple(row)[width + EVENT_WIDTH :]),
            )
            for row in rows
        ]

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
        write = DeliveryWrite(
            delivery_id=delivery_id,
            state=state,
            error=error,
            next_attempt_at=next_attempt_at,
            at=at,
            attempt=attempt,
        )
        if state not in _FINAL or attempt is None:
            await self._outcomes.submit(write)
            return
        finishing = (delivery_id, attempt)
        self._finishing[finishing] += 1
        try:
            await self._outcomes.submit(write)
        finally:
            self._finishing[finishing] -= 1
            if not self._finishing[finishing]:
                del self._finishing[finishing]

    async def release_delivery(
        self, delivery_id: str, *, at: float, attempt: int | None = None
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET state = 'pending', attempts = GREATEST(0, attempts - 1),"
            " next_attempt_at = $1, lease_until = NULL, worker_id = NULL,"
            " updated_at = $1"
            " WHERE id = $2 AND state = 'running' AND ($3::int IS NULL OR attempts = $3)",
            at,
            delivery_id,
            attempt,
        )

    async def renew_lease(
        self, delivery_id: str, *, lease_until: float, attempt: int | None = None
    ) -> bool:
        status = await self._execute(
            "UPDATE deliveries SET lease_until = $1 WHERE id = $2 AND state = 'running'"
            " AND ($3::int IS NULL OR attempts = $3)",
            lease_until,
            delivery_id,
            attempt,
        )
        return bool(int(status.split()[-1]))

    async def release_running(self) -> int:
        """Every running delivery back to pending. Only safe when no other process runs
        handlers on this database, so the dispatcher does not call it on a shared store."""
        status = await self._execute(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL WHERE state = 'running'"
        )
        return int(status.split()[-1])

    async def next_delivery_at(self) -> float | None:
        row = await self._fetchrow(_NEXT_DUE)
        return row[0] if row else None

    async def list_deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]:
        clauses: list[str] = []
        params: list[Any] = []
        if job_id is not None:
            params.append(job_id)
            clauses.append(_of_job(len(params)))
        if state is not None:
            params.append(state.value)
            clauses.append(f"state = ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        rows = await self._fetch(
            f"SELECT {DELIVERIES.select} FROM deliveries {where} ORDER BY seq LIMIT ${len(params)}",
            *params,
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
        finished = sorted(s.value for s in states if s in (DeliveryState.DEAD, DeliveryState.DONE))
        if not finished:
            return []
        params: list[Any] = [at, finished]
        clauses = ["state = ANY($2::text[])"]
        for column, value in (("id", delivery_id), ("job_id", job_id), ("handler", handler)):
            if value is not None:
                params.append(value)
                n = len(params)
                clauses.append(_of_job(n) if column == "job_id" else f"{column} = ${n}")
        async with self._transaction() as db:
            rows = await db.fetch(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1,"
                f" lease_until = NULL, updated_at = $1 WHERE {' AND '.join(clauses)}"
                f" RETURNING seq, {DELIVERIES.select}",
                *params,
            )
            if rows:
                await db.execute(_COUNT_REPLAYS, len(rows))
                # Workers in other processes start the replays at once.
                await db.execute("SELECT pg_notify($1, '')", DELIVERIES_CHANNEL)
        ordered = sorted(rows, key=lambda row: row[0])
        return [DELIVERIES.read(tuple(row)[1:]) for row in ordered]

    async def replay_count(self) -> int:
        row = await self._fetchrow("SELECT value FROM counters WHERE name = 'replays'")
        return int(row[0]) if row else 0

    async def delivery_summary(self) -> DeliverySummary:
        rows = await self._fetch(
            "SELECT state, COUNT(*), MIN(CASE WHEN state = 'pending' THEN created_at END)"
            " FROM deliveries GROUP BY state"
        )
        counts = {state.value: 0 for state in DeliveryState}
        oldest: float | None = None
        for state, count, first in rows:
            counts[state] = int(count)
            if first is not None:
                oldest = first
        return DeliverySummary(counts=counts, oldest_pending_at=oldest)

    async def job_counts(self) -> dict[str, int]:
        return job_counts_of(await self._fetch(JOB_COUNTS))

    # Polls

    async def claim_polls(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Job]:
        rows = await self._fetch(_CLAIM_POLLS, at + lease, at, limit, worker)
        return [JOBS.read(row) for row in rows]

    async def schedule_poll(self, job_id: str, at: float | None, *, attempted: bool) -> None:
        await self._execute(
            "UPDATE jobs SET next_poll_at = CASE WHEN status IN ('queued', 'running')"
            " THEN $1::double precision END, poll_attempts = poll_attempts + $2,"
            " poll_worker_id = NULL WHERE id = $3",
            at,
            1 if attempted else 0,
            job_id,
        )

    async def next_poll_at(self) -> float | None:
        row = await self._fetchrow(
            "SELECT MIN(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL"
            " AND (task_id IS NOT NULL OR create_state IS NOT NULL)"
            " AND status IN ('queued', 'running')"
        )
        return row[0] if row else None

    async def schedule_unscheduled_polls(self, provider: str, *, deadline: float) -> int:
        status = await self._execute(
            "UPDATE jobs SET next_poll_at = updated_at + $1 WHERE provider = $2"
            " AND status IN ('queued', 'running') AND task_id IS NOT NULL"
            " AND next_poll_at IS NULL",
            deadline,
            provider,
        )
        return int(status.split()[-1])  # asyncpg answers "UPDATE <count>"

    # Workers

    async def register_worker(self, worker: Worker) -> Worker:
        async with self._beating() as db:
            row = await db.fetchrow(
                "INSERT INTO workers"
                " (id, host, pid, pid_scope, timeout, started_at, heartbeat_at)"
                f" SELECT $1, $2, $3, $4, $5, t, t FROM (SELECT {_DB_NOW} AS t) AS clock"
                " ON CONFLICT (id) DO UPDATE"
                " SET heartbeat_at = EXCLUDED.heartbeat_at, timeout = EXCLUDED.timeout"
                f" RETURNING {_WORKER_COLUMNS}",
                worker.id,
                worker.host,
                worker.pid,
                worker.pid_scope,
                worker.timeout,
            )
        return Worker(**dict(row))

    async def heartbeat(self, worker_id: str) -> bool:
        sql = f"UPDATE workers SET heartbeat_at = {_DB_NOW} WHERE id = $1"
        try:
            async with self._beating() as db:
                status: str = await db.execute(sql, worker_id)
        except StoreUnavailable:
            # No connection of its own to be had (the server's connection limit, say): the
            # pool's may still reach the server, and a missed beat can cost a live worker.
            status = await self._execute(sql, worker_id)
        return status != "UPDATE 0"

    async def list_workers(self) -> list[Worker]:
        rows = await self._fetch(f"SELECT {_WORKER_COLUMNS} FROM workers ORDER BY started_at, id")
        return [Worker(**dict(row)) for row in rows]

    async def reap_workers(
        self, *, late: bool = True, dead: Sequence[str] = (), at: float
    ) -> Reaped:
        async with self._beating() as db:
            row = await db.fetchrow(
                _REAP_WORKERS, late, list(dead), at, DELIVERIES_CHANNEL, POLLS_CHANNEL
            )
        return Reaped(workers=list(row[0]), deliveries=row[1], polls=row[2])

    # Retention

    async def prune(
        self, *, before: float, limit: int, dry_run: bool = False, jobs: bool = False
    ) -> dict[str, int]:
        if dry_run:
            counts = {}
            for table, sql in _COUNT_PRUNABLE.items():
                if table != "jobs" or jobs:
                    row = await self._fetchrow(*_bind(sql, before, keep_from=before))
                    counts[table] = int(row[0])
            counts.setdefault("jobs", 0)
            return counts
        # Each table in its own short transaction. Rows are picked FOR UPDATE SKIP LOCKED:
        # pruners in several processes take different rows and never wait on each other.
        async with self._transaction() as db:
            ids = [row[0] for row in await db.fetch(*_bind(_PICK_EVENTS, before, limit))]
            deliveries = await db.execute(_PRUNE_DELIVERIES, ids)
            events = await db.execute(_PRUNE_EVENTS, ids)
        counts = {"deliveries": _count(deliveries), "events": _count(events)}
        for table, sql in (("requests", _PRUNE_REQUESTS), ("quarantine", _PRUNE_QUARANTINE)):
            counts[table] = _count(await self._execute(*_bind(sql, before, limit)))
        counts["jobs"] = (
            _count(await self._execute(*_bind(_PRUNE_JOBS, before, limit))) if jobs else 0
        )
        return counts


def _bind(
    sql: str, before: float, limit: int | None = None, *, keep_from: float = -math.inf
) -> list[Any]:
    """A pruning statement with its named parameters numbered, then their values."""
    given = prune_values(before, limit=limit, keep_from=keep_from)
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    numbered = re.sub(r"(?<!:):([a-z_]+)", number, sql)
    return [numbered, *(given[name] for name in names)]


def _count(status: str) -> int:
    """The row count of asyncpg's status answer, such as "DELETE 12"."""
    return int(status.split()[-1])


_Run = Callable[[asyncpg.Connection, Sequence[Any]], Awaitable[list[Outcome]]]


async def _ingest(
    db: asyncpg.Connection,
    items: Sequence[Record | Nudge],
    *,
    finishing: Container[tuple[str, int]],
) -> list[Outcome]:
    async with db.transaction():
        return await write_batch(db, items, finishing=finishing)


# A delivery's outcomes after which nothing of it runs again.
_FINAL = frozenset({DeliveryState.DONE, DeliveryState.DEAD})


def _job_named(item: Record | Nudge) -> Hashable:
    """The job an ingest item writes, as it names it (id, URL token, or a new task), so that
    two items for one job never ride two batches in flight at once."""
    if isinstance(item, Nudge):
        return item.job_id or item.token_hash
    write = item.write
    if write.new_job is not None and write.job_id is None:
        return (write.new_job.job.provider, write.new_job.job.task_id)
    return write.job_id or item.token_hash


def _split_on(exc: BaseException) -> bool:
    """Whether a batch that failed with `exc` is worth running again item by item: an
    error one item's rows may have caused, or a deadlock or serialization failure (a
    retry goes through). A database that cannot serve (a fault) fails every item; a lock
    wait that timed out is split too, so only the item of the locked job fails."""
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return True
    if isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "")[:2] == "40":
        return True
    return not is_fault(exc)


def _drop_if_broken(connection: asyncpg.Connection, exc: BaseException) -> None:
    """Close a connection that failed for a connection reason, so the pool replaces it
    instead of handing out a socket in an unknown state."""
    if is_fault(exc) and not isinstance(
        exc, asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError
    ):
        with contextlib.suppress(Exception):  # already closed or released: nothing to drop
            connection.terminate()


def _callback(wake: Callable[[], None]) -> Callable[..., None]:
    def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
        wake()

    return on_notify


_SPENT = f"SELECT SUM(COALESCE(cost, estimated_cost)) FROM jobs WHERE created_at >= $1 AND {PRICED}"


def _spend_query(value: str) -> str:
    """spend()'s query: every job created since a time ($1), walked by id from $2
    (rows.spend_bound)."""
    return (
        f"SELECT provider, floor(created_at / {DAY})::bigint AS day, {value} AS value,"
        " COUNT(*), SUM(estimated_cost), SUM(COALESCE(cost, estimated_cost))"
        " FROM jobs WHERE created_at >= $1 AND id >= $2 GROUP BY provider, day, value"
        " ORDER BY day, provider, value"
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What the pool runs on a connection given back, after asyncpg's own rollback of a
    transaction left open: nothing. Its default also sent `RESET ALL`, `UNLISTEN *` and an
    advisory unlock: a round trip per release (under the bench about as many releases as
    callbacks), for session state no pooled connection takes: settings are never SET,
    advisory locks are taken per transaction, and LISTEN has a connection of its own."""
    del connection


def _budget_lock(name: str) -> int:
    """The advisory lock key of a budget: 64 bits of a digest of its name."""
    return _lock_key(f"receiver-budget:{name}")


def _slot_lock(provider: str) -> int:
    """The advisory lock key that serialises admissions under a provider's in-flight cap."""
    return _lock_key(f"receiver-slots:{provider}")


def _lock_key(name: str) -> int:
    hashed = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(hashed[:8], "big", signed=True)


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _of_job(n: int) -> str:
    """A job's deliveries, through its events (events_dedupe by job_id, then
    deliveries_event): the index on deliveries by job holds only unfinished ones (0011)."""
    return f"event_id IN (SELECT id FROM events WHERE job_id = ${n})"


# RECEIVER_<PROVIDER>_MAX_RUNNING (receiver.slots): a job is in flight at its provider
# from its insert until it ends, unless it waits for a slot.
_HOLD_FOR_SLOT = (
    "UPDATE jobs SET create_state = 'slot', create_request = $1, next_poll_at = $2,"
    " poll_worker_id = NULL, updated_at = $3 WHERE id = $4 AND status = 'queued'"
)
_ANY_WAITING_SLOT = "SELECT 1 FROM jobs WHERE provider = $1 AND create_state = 'slot' LIMIT 1"
_IN_FLIGHT = (
    "SELECT COUNT(*) FROM jobs WHERE provider = $1 AND status IN ('queued', 'running')"
    " AND create_state IS DISTINCT FROM 'slot'"
)
_ADMIT = (
    "UPDATE jobs SET create_state = 'waiting', next_poll_at = $3, updated_at = $4"
    " WHERE id IN (SELECT id FROM jobs WHERE provider = $1 AND create_state = 'slot'"
    "  AND status = 'queued' ORDER BY created_at, id LIMIT $2 FOR UPDATE)"
    " RETURNING id, created_at"
)
_SWITCH_PROVIDER = (
    "UPDATE jobs SET provider = $1, token_hash = $2, secret_hash = $3, create_state = NULL,"
    " updated_at = $4 WHERE id = $5 AND status = 'queued'"
)
_INSERT_JOB = _insert(
    "jobs", (*JOBS.columns, "token_hash", "secret_hash", "input", "next_poll_at", "request_hash")
)
# A job's requests: those its events came from (events_dedupe, then the requests' key)
# and the ones without an event, which name their job themselves (nudges; requests_job);
# each with our answer to it, when it is known.
_JOB_REQUESTS = (
    f"SELECT {REQUESTS.select_as('r')}, a.status, a.ms FROM ("
    "  SELECT id FROM requests WHERE job_id = $1"
    "  UNION ALL SELECT e.request_id FROM events e JOIN requests k ON k.id = e.request_id"
    "   WHERE e.job_id = $1 AND k.job_id IS NULL) AS mine"
    " JOIN requests r ON r.id = mine.id LEFT JOIN answers a ON a.request_id = r.id"
    " ORDER BY r.id"
)
# One statement for the whole batch of answers (receiver.answers).
# An answer to a request that is not stored (any more) is dropped: nothing would show it;
# a request answered twice in one batch keeps its last answer.
_SAVE_ANSWERS = (
    "INSERT INTO answers (request_id, status, ms)"
    " SELECT DISTINCT ON (a.id) a.id, a.status, a.ms"
    " FROM unnest($1::text[], $2::int2[], $3::float8[]) WITH ORDINALITY AS a (id, status, ms, n)"
    " WHERE EXISTS (SELECT 1 FROM requests r WHERE r.id = a.id) ORDER BY a.id, a.n DESC"
    " ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, ms = excluded.ms"
)
_COUNT_REPLAYS = "UPDATE counters SET value = value + $1 WHERE name = 'replays'"

_INSERT_QUARANTINE = _insert("quarantine", QUARANTINE.columns)
# Ids sort by time: everything from the (keep + 1)-th newest down, oldest first, `batch` at most.
_TRIM_QUARANTINE = (
    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine"
    " WHERE id <= (SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET $1)"
    " ORDER BY id LIMIT $2)"
)


def _nothing_before(*, but: str = "") -> str:
    """That no earlier delivery of pending delivery `d`'s job and handler is unfinished
    (but those `but` excepts): that keeps one job's events in order for each handler.
    Walked backwards from `d`, the sibling that holds it back is the first entry met."""
    return (
        "(SELECT e.seq FROM deliveries e WHERE e.job_id = d.job_id AND e.handler = d.handler"
        f"  AND e.seq < d.seq AND e.state IN ('pending', 'running'){but}"
        "  ORDER BY e.seq DESC LIMIT 1) IS NULL"
    )


# A claim's view: a delivery whose handler has returned in this process, its outcome (done
# or dead) not yet committed ($5 ids, $6 attempts), holds nothing back (see _finishing).
_NOTHING_UNFINISHED_BEFORE = _nothing_before(
    but=" AND (e.id, e.attempts) <> ALL (SELECT * FROM unnest($5::text[], $6::int4[]))"
)
# Pending deliveries nothing holds back, in due order (deliveries_pending).
_NEXT_PENDING = (
    "SELECT d.next_attempt_at FROM deliveries d WHERE d.state = 'pending'"
    f" AND {_nothing_before()}"
    " ORDER BY d.next_attempt_at, d.seq"
)
# When claim_deliveries next has something to take: the first such pending delivery, or
# the first lease to run out. Each part walks its own index in order and stops at its
# first row (0015_due_indexes).
_NEXT_DUE = (
    f"SELECT LEAST(({_NEXT_PENDING} LIMIT 1),"
    " (SELECT lease_until FROM deliveries WHERE state = 'running'"
    "  ORDER BY lease_until LIMIT 1))"
)
# Due pending deliveries nothing holds back, and running ones whose lease ran out (their
# runner died), for a worker still registered ($4; a worker declared dead claims
# nothing): each kind from its own index (0015_due_indexes), the earliest $3 of both
# taken. The state test sits on the locked row itself, so PostgreSQL re-checks it on
# the row's latest version: a delivery another worker took in the meantime is dropped,
# never claimed twice. Rows locked but not taken are let go as the statement commits.
_CLAIM_DELIVERIES = (
    "WITH pending AS ("
    "  SELECT d.seq, d.next_attempt_at AS due FROM deliveries d"
    "  WHERE d.state = 'pending' AND d.next_attempt_at <= $2"
    f"   AND {_NOTHING_UNFINISHED_BEFORE}"
    "   AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM workers w WHERE w.id = $4))"
    "  ORDER BY d.next_attempt_at, d.seq LIMIT $3 FOR UPDATE OF d SKIP LOCKED),"
    " lapsed AS ("
    "  SELECT d.seq, d.lease_until AS due FROM deliveries d"
    "  WHERE d.state = 'running' AND d.lease_until < $2"
    "   AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM workers w WHERE w.id = $4))"
    "  ORDER BY d.lease_until, d.seq LIMIT $3 FOR UPDATE OF d SKIP LOCKED),"
    " picked AS ("
    "  SELECT seq, due FROM pending UNION ALL SELECT seq, due FROM lapsed"
    "  ORDER BY due, seq LIMIT $3),"
    " claimed AS ("
    "  UPDATE deliveries SET state = 'running', attempts = attempts + 1,"
    "   lease_until = $1, updated_at = $2, worker_id = $4"
    "  FROM picked WHERE deliveries.seq = picked.seq"
    f"  RETURNING {DELIVERIES.select_as('deliveries')}, picked.due, picked.seq)"
    # With each delivery's event and job: one round trip, committed by itself.
    f" SELECT {DELIVERIES.select_as('claimed')}, {EVENT_SELECT}, {JOBS.select_as('j')}"
    " FROM claimed JOIN events e ON e.id = claimed.event_id JOIN jobs j ON j.id = e.job_id"
    " ORDER BY claimed.due, claimed.seq"
)
_CLAIM_POLLS = (
    "WITH picked AS ("
    "  SELECT id, next_poll_at AS due FROM jobs WHERE next_poll_at <= $2"
    "  AND (task_id IS NOT NULL OR create_state IS NOT NULL)"
    "  AND status IN ('queued', 'running')"
    "  AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM workers w WHERE w.id = $4))"
    "  ORDER BY next_poll_at LIMIT $3 FOR UPDATE SKIP LOCKED),"
    " claimed AS ("
    "  UPDATE jobs SET next_poll_at = $1, poll_worker_id = $4"
    "  FROM picked WHERE jobs.id = picked.id"
    f"  RETURNING {JOBS.select_as('jobs')}, picked.due)"
    f" SELECT {JOBS.select} FROM claimed ORDER BY due, id"
)

# Heartbeats are stamped and compared on the database's clock, never a host's own.
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
_WORKER_COLUMNS = "id, host, pid, pid_scope, timeout, started_at, heartbeat_at"
# One statement: remove the late workers (and those known dead), put their running
# deliveries back to pending with the attempt counted (which fences the dead runner's
# writes), make their polls due, and wake every process if anything moved. Work stamped
# with a worker that has no row is taken back too. The CTEs see the workers table as it
# was before `gone`, so the gone ones are named explicitly. Rows another transaction
# holds (a renewal, a claim) are skipped, not waited for: left stamped with a worker
# that has no row, the next reap takes them.
_REAP_WORKERS = (
    "WITH gone AS ("
    f"  DELETE FROM workers WHERE ($1 AND heartbeat_at < {_DB_NOW} - timeout)"
    "   OR id = ANY($2::text[])"
    "  RETURNING id),"
    " freed AS ("
    "  UPDATE deliveries d SET state = 'pending', lease_until = NULL, updated_at = $3,"
    "   last_error = 'worker ' || d.worker_id || ' stopped; taken over', worker_id = NULL"
    "  FROM (SELECT seq FROM deliveries e WHERE e.state = 'running'"
    "   AND e.worker_id IS NOT NULL AND (e.worker_id IN (SELECT id FROM gone)"
    "    OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = e.worker_id))"
    "   FOR UPDATE SKIP LOCKED) AS picked"
    "  WHERE d.seq = picked.seq RETURNING 1),"
    " polled AS ("
    "  UPDATE jobs j SET poll_worker_id = NULL,"
    "   next_poll_at = CASE WHEN j.next_poll_at > $3 THEN $3 ELSE j.next_poll_at END"
    "  FROM (SELECT id FROM jobs k WHERE k.poll_worker_id IS NOT NULL"
    "   AND (k.poll_worker_id IN (SELECT id FROM gone)"
    "    OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = k.poll_worker_id))"
    "   FOR UPDATE SKIP LOCKED) AS picked"
    "  WHERE j.id = picked.id RETURNING 1),"
    " counts AS ("
    "  SELECT (SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM gone) AS workers,"
    "   (SELECT count(*) FROM freed)::int AS deliveries,"
    "   (SELECT count(*) FROM polled)::int AS polls)"
    " SELECT workers, deliveries, polls,"
    "  CASE WHEN deliveries > 0 THEN pg_notify($4, '') END,"
    "  CASE WHEN polls > 0 THEN pg_notify($5, '') END"
    " FROM counts"
)


# Retention (see Store.prune), as in the SQLite store: a job's rows may go once it ended
# before the cutoff and no delivery of it is unfinished. Events and requests are walked by
# id up to the cutoff's first one (0014_fewer_indexes, rows.prune_values), received_at
# still deciding: a row whose id was minted after its received_at is only kept longer.
# `keep_from` is -inf when deleting (any event keeps a request or a job), the cutoff when
# counting (an event that will stay keeps it). Parameters are named; `_bind` numbers them.
_ENDED = (
    "j.status IN ('succeeded', 'failed', 'cancelled') AND j.updated_at < :before"
    " AND NOT EXISTS (SELECT 1 FROM deliveries u WHERE u.job_id = j.id"
    "  AND u.state IN ('pending', 'running'))"
)
_PRUNABLE_EVENTS = (
    "FROM events e WHERE e.id < :events_below AND e.received_at < :before"
    f" AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id AND {_ENDED})"
)
# A request's job is its own (a nudge's) or its event's (0012_leaner_rows), whose events
# are found by events_request (one collation for both ids since 0013_id_collation).
_PRUNABLE_REQUESTS = (
    "FROM requests r LEFT JOIN jobs j ON j.id = COALESCE(r.job_id,"
    "  (SELECT min(k.job_id) FROM events k WHERE k.request_id = r.id))"
    " WHERE r.id < :requests_below AND r.received_at < :before"
    f" AND (j.id IS NULL OR ({_ENDED}))"
    " AND NOT EXISTS (SELECT 1 FROM events k WHERE k.request_id = r.id"
    "  AND k.received_at >= :keep_from)"
)
_PRUNABLE_QUARANTINE = "FROM quarantine q WHERE q.received_at < :before"
_PRUNABLE_JOBS = (
    f"FROM jobs j WHERE {_ENDED}"
    " AND NOT EXISTS (SELECT 1 FROM events k WHERE k.job_id = j.id"
    "  AND k.received_at >= :keep_from)"
    " AND NOT EXISTS (SELECT 1 FROM requests k WHERE k.job_id = j.id"
    "  AND k.received_at >= :keep_from)"
)
_PICK_EVENTS = (
    f"SELECT e.id {_PRUNABLE_EVENTS} ORDER BY e.id LIMIT :limit FOR UPDATE OF e SKIP LOCKED"
)
# Only finished deliveries, checked again on the row itself: one a replay put back to
# pending since the pick stays, and so does its event.
_PRUNE_DELIVERIES = (
    "DELETE FROM deliveries WHERE event_id = ANY($1::text[]) AND state IN ('done', 'dead')"
)
_PRUNE_EVENTS = (
    "DELETE FROM events e WHERE e.id = ANY($1::text[])"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)"
)
_PRUNE_REQUESTS = (
    f"DELETE FROM requests WHERE id IN (SELECT r.id {_PRUNABLE_REQUESTS}"
    " ORDER BY r.id LIMIT :limit FOR UPDATE OF r SKIP LOCKED)"
)
_PRUNE_QUARANTINE = (
    f"DELETE FROM quarantine WHERE id IN (SELECT q.id {_PRUNABLE_QUARANTINE}"
    " ORDER BY q.received_at LIMIT :limit FOR UPDATE OF q SKIP LOCKED)"
)
_PRUNE_JOBS = (
    f"DELETE FROM jobs WHERE id IN (SELECT j.id {_PRUNABLE_JOBS}"
    " ORDER BY j.updated_at LIMIT :limit FOR UPDATE OF j SKIP LOCKED)"
)
_COUNT_PRUNABLE = {
    "deliveries": "SELECT COUNT(*) FROM deliveries d WHERE d.event_id IN"
    f" (SELECT e.id {_PRUNABLE_EVENTS})",
    "events": f"SELECT COUNT(*) {_PRUNABLE_EVENTS}",
    "requests": f"SELECT COUNT(*) {_PRUNABLE_REQUESTS}",
    "quarantine": f"SELECT COUNT(*) {_PRUNABLE_QUARANTINE}",
    "jobs": f"SELECT COUNT(*) {_PRUNABLE_JOBS}",
}
