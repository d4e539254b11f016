"""Databases as an older receiver left them, for the tests of the migrations that follow.

A database is migrated up to (not including) a version, then filled by plain statements
(`?` placeholders, numbered for PostgreSQL): rows in the shape that version found them.
`carried_forward` opens a store on such a database, migrated forward. `query` reads
either backend's rows back the same way, `index_names` and `index_definition` its indexes.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from receiver.state import dedupe_digest
from receiver.store import SQLiteStore, Store
from receiver.store.migrations import migrations

Statements = Iterable[tuple[str, Sequence[Any]]]


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's $1, $2, ..."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


async def query(backend: str, url: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    if backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            return connection.execute(sql, params).fetchall()
    import asyncpg

    from receiver.store.postgres import pool_options

    connection = await asyncpg.connect(pool_options(url)[0])
    try:
        return [tuple(row) for row in await connection.fetch(numbered(sql), *params)]
    finally:
        await connection.close()


async def index_names(backend: str, url: str) -> set[str]:
    """The names of the database's indexes (PostgreSQL: of the URL's schema)."""
    sql = (
        "SELECT name FROM sqlite_master WHERE type = 'index'"
        if backend == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    return {row[0] for row in await query(backend, url, sql)}


async def index_definition(backend: str, url: str, name: str) -> str:
    """The CREATE INDEX statement of index `name`, as the database gives it back."""
    sql = (
        "SELECT sql FROM sqlite_master WHERE name = ?"
        if backend == "sqlite"
        else "SELECT indexdef FROM pg_indexes WHERE indexname = ?"
    )
    [(definition,)] = await query(backend, url, sql, (name,))
    return str(definition)


def sqlite_migrated(connection: sqlite3.Connection, *, below: int | None = None) -> None:
    """Apply the SQLite migrations (those before `below`), with the function the store
    gives them (0011's digest of dedupe keys)."""
    connection.create_function("receiver_dedupe_digest", 1, dedupe_digest, deterministic=True)
    for migration in migrations("sqlite"):
        if below is None or migration.version < below:
            connection.executescript(migration.sql)


def sqlite_before(path: Path, version: int, statements: Statements) -> None:
    """A SQLite file at the schema before `version`, holding `statements`' rows."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        sqlite_migrated(connection, below=version)
        connection.executemany(
            "INSERT INTO schema_migrations VALUES (?, ?, 0)",
            [(m.version, m.name) for m in migrations("sqlite") if m.version < version],
        )
        for sql, params in statements:
            connection.execute(sql, params)


async def postgres_before(url: str, version: int, statements: Statements) -> None:
    """A PostgreSQL database at the schema before `version`, holding `statements`' rows."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for migration in migrations("postgres"):
            if migration.version < version:
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, 0)",
                    migration.version,
                    migration.name,
                )
        for sql, params in statements:
            await connection.execute(numbered(sql), *params)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def carried_forward(
    backend: str, place: str, version: int, statements: Statements
) -> AsyncIterator[tuple[Store, str]]:
    """An open store, and its URL, on a database left before `version` (holding
    `statements`' rows) and migrated forward: a SQLite file at `place` by its own opening;
    the PostgreSQL database `place` by `receiver migrate`, which must apply exactly the
    migrations from `version` on."""
    if backend == "sqlite":
        sqlite_before(Path(place), version, statements)
        url = f"sqlite:///{place}"
        store: Store = SQLiteStore(url)
    else:
        from receiver.store.postgres import PostgresStore

        await postgres_before(place, version, statements)
        assert [m.name for m in migrations("postgres") if m.version >= version] == (
            await PostgresStore(place).migrate()
        )
        url, store = place, PostgresStore(place)
    await store.open()
    try:
        yield store, url
    finally:
        await store.close()
