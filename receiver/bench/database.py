"""The benchmark's side of the database: its schema, size, the jobs it posts to, and the check.

Everything is read and written through the receiver's own Store API (and `receiver
migrate`), so the benchmark does not depend on how a backend lays out its tables; only
the size on disk is read directly (a SQLite file, `pg_database_size`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from receiver.bench.load import Load
from receiver.bench.routes import JobPool, make_jobs, stored_keys
from receiver.store import Store, store_for
from receiver.store.sqlite import sqlite_path

__all__ = ["Sent", "db_bytes", "migrate", "missing", "provision", "with_store"]

T = TypeVar("T")


class Sent(msgspec.Struct, kw_only=True):
    """One load sent to a receiver: its route, task prefix, database and what it saw."""

    route: str
    prefix: str
    database_url: str | None
    load: Load


@asynccontextmanager
async def _opened(database_url: str) -> AsyncIterator[Store]:
    store = store_for(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def with_store(database_url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on an opened Store of `database_url` (the receiver is not using it then,
    or, on PostgreSQL, shares it)."""

    async def run() -> T:
        async with _opened(database_url) as store:
            return await work(store)

    return asyncio.run(run())


def provision(
    database_url: str,
    routes: Sequence[str],
    prefix: Callable[[], str],
    *,
    concurrency: int,
    seconds: Sequence[float],
) -> dict[tuple[str, int], JobPool]:
    """The jobs each job route posts to: one pool per (route, load) of `seconds` each."""

    async def work(store: Store) -> dict[tuple[str, int], JobPool]:
        pools = {}
        for route in routes:
            for index, length in enumerate(seconds):
                pools[route, index] = await make_jobs(
                    store, route, prefix(), concurrency=concurrency, seconds=length
                )
        return pools

    return with_store(database_url, work)


def missing(database_url: str, sent: Sequence[Sent]) -> tuple[int, int]:
    """(stored, missing) over the acknowledged requests of `sent`, through the Store's reads.

    The built-in generator keeps each acknowledged request's key, checked key by key; wrk
    only counts, so its loads are checked by the number of their tasks found.
    """

    async def work(store: Store) -> tuple[int, int]:
        stored = lost = 0
        for item in sent:
            load = item.load
            if load.acked:
                found = await stored_keys(store, item.route, load.acked)
                absent = sum(1 for key in load.acked if key not in found)
                stored += load.acknowledged - absent
                lost += absent
            else:
                count = await _tasks_with_prefix(store, item.prefix)
                stored += count
                lost += max(0, load.acknowledged - count)
        return stored, lost

    return with_store(database_url, work)


async def _tasks_with_prefix(store: Store, prefix: str) -> int:
    """apiframe jobs whose task id starts with `prefix` (wrk's loads, a job per callback)."""
    count, before = 0, None
    while True:
        page = await store.list_jobs(provider="apiframe", limit=500, before=before)
        count += sum(1 for job in page.items if (job.task_id or "").startswith(prefix))
        if page.next is None:
            return count
        before = page.next


def db_bytes(database_url: str) -> int:
    """The database's size on disk; a SQLite file is checkpointed first so its WAL is counted."""
    if database_url.startswith("sqlite:"):
        path = sqlite_path(database_url)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    async def size() -> int:
        import asyncpg

        from receiver.store.postgres import pool_options

        connection = await asyncpg.connect(pool_options(database_url)[0])
        try:
            return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
        finally:
            await connection.close()

    return asyncio.run(size())


def migrate(database_url: str, directory: Path) -> None:
    """`receiver migrate` for PostgreSQL (SQLite is migrated by whoever opens it first)."""
    if database_url.startswith("sqlite:"):
        return
    env = {**os.environ, "RECEIVER_DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "receiver", "migrate"],
        env=env,
        cwd=directory,
        check=True,
        capture_output=True,
    )
