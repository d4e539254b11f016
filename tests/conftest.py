"""Fixtures shared by the unit and contract tests: a store per backend and a fresh registry.

PostgreSQL tests use the server at TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test). Each test gets a fresh, migrated schema
in a database made for the session. In CI (CI=true) an unreachable server
fails those tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
from live_process import run_sync

from receiver.dispatch import Registry
from receiver.store import SQLiteStore, Store

# Every backend the contract tests run against.
BACKENDS = ["sqlite", "postgres"]
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

T = TypeVar("T")


def database_url(base: str, name: str) -> str:
    """`base` with its database name replaced by `name`."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


class PostgresServer:
    """Throwaway schemas (one per test) and databases on the test server.

    The session makes one database of its own, so runs sharing the server never meet;
    each test then gets a fresh, migrated schema in it, named by the URL's `search_path`.
    """

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.session_db = f"receiver_s_{os.getpid()}_{secrets.token_hex(3)}"
        self.session_url = database_url(admin_url, self.session_db)

    async def execute(self, sql: str, *, url: str | None = None) -> None:
        import asyncpg

        connection = await asyncpg.connect(url or self.admin_url, timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def start(self) -> None:
        await self.execute(f'CREATE DATABASE "{self.session_db}"')

    async def stop(self) -> None:
        await self.execute(f'DROP DATABASE IF EXISTS "{self.session_db}" WITH (FORCE)')

    async def create_schema(self) -> str:
        """A new, migrated, empty schema; the URL of a store that uses it."""
        from receiver.store.postgres import PostgresStore

        name = f"t_{secrets.token_hex(6)}"
        await self.execute(f'CREATE SCHEMA "{name}"', url=self.session_url)
        url = f"{self.session_url}?search_path={name}"
        await PostgresStore(url).migrate()
        return url

    async def drop_schema(self, url: str) -> None:
        name = url.rsplit("search_path=", 1)[1]
        await self.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE', url=self.session_url)

    async def create_database(self) -> str:
        """A new, empty (unmigrated) database of its own; its URL."""
        name = f"receiver_d_{secrets.token_hex(6)}"
        await self.execute(f'CREATE DATABASE "{name}"')
        return database_url(self.admin_url, name)

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        await self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unreachable(reason: str) -> None:
    message = f"PostgreSQL at {POSTGRES_URL} is needed: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(f"{message} (set TEST_POSTGRES_URL; CI fails instead of skipping)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL test server, with this session's template database."""
    try:
        import asyncpg  # noqa: F401 - only checking that the postgres extra is installed
    except ImportError:
        _unreachable("asyncpg is not installed (pip install -e '.[test]')")
    server = PostgresServer(POSTGRES_URL)
    try:
        run_sync(server.start)
    except Exception as exc:
        _unreachable(f"{type(exc).__name__}: {exc}")
    try:
        yield server
    finally:
        run_sync(server.stop)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the store backend under test."""
    return str(request.param)


@pytest.fixture
async def store_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The database URL of this test: a SQLite file, or a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'receiver.db'}"  # sqlite:////abs/path
        return
    if backend != "postgres":
        raise AssertionError(f"no fixture for backend {backend!r}")
    server: PostgresServer = request.getfixturevalue("postgres")
    url = await server.create_schema()
    try:
        yield url
    finally:
        await server.drop_schema(url)


@pytest.fixture
async def pg_database(postgres: PostgresServer) -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database of this test's own (not migrated)."""
    url = await postgres.create_database()
    try:
        yield url
    finally:
        await postgres.drop_database(url)


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """The URL of a new, migrated PostgreSQL database of this test's own."""
    from receiver.store.postgres import PostgresStore

    await PostgresStore(pg_database).migrate()
    return pg_database


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection to this test's own migrated database, to look at its rows."""
    import asyncpg

    connection = await asyncpg.connect(pg_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Any]:
    """An open PostgresStore on this test's own migrated database."""
    from receiver.store.postgres import PostgresStore

    opened = PostgresStore(pg_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the shared PostgreSQL server run last, after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture
def make_store(backend: str, store_url: str) -> Callable[[], Store]:
    """Unopened stores on this test's database; call again to "restart" on the same data."""
    if backend == "sqlite":
        return lambda: SQLiteStore(store_url)
    from receiver.store.postgres import PostgresStore

    return lambda: PostgresStore(store_url)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """An opened, empty store of each backend; closed after the test."""
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def registry() -> Registry:
    """A handler registry of the test's own, so tests never see each other's handlers."""
    return Registry()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print what the fault-injection and fuzzing tests measured."""
    from figures import FIGURES, render, save

    if FIGURES:
        terminalreporter.section("figures")
        terminalreporter.write_line(render())
        save(config.rootpath)
