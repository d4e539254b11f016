"""Databases as an older receiver left them, for the tests of the migrations that follow.

A database is migrated up to (not including) a version, then filled by plain statements
(`?` placeholders, numbered for PostgreSQL): rows in the shape that version found them.
`query` reads either backend's rows back the same way, `index_names` and
`index_definition` its indexes.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from receiver.state import dedupe_digest
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
