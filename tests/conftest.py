"""Fixtures shared by the unit and contract tests: a store per backend and a fresh registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from receiver.dispatch import Registry
from receiver.store import SQLiteStore, Store

# Every backend the contract tests run against. PostgreSQL joins here ("postgres") once
# receiver/store/postgres.py exists: add a branch to `_new_store` that returns a
# PostgresStore on a throwaway database made for this test.
BACKENDS = ["sqlite"]


def _new_store(backend: str, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")  # sqlite:////abs/path
    raise AssertionError(f"no fixture for backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the store backend under test."""
    return str(request.param)


@pytest.fixture
def make_store(backend: str, tmp_path: Path) -> Callable[[], Store]:
    """Unopened stores on this test's database; call again to "restart" on the same data."""
    return lambda: _new_store(backend, tmp_path)


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
