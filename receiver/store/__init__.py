"""Durable storage behind one seam; `store_for` picks the backend from the database URL."""

from __future__ import annotations

from receiver.errors import ConfigError
from receiver.store.base import Claimed, JobPage, NewJob, Recorded, Router, Store, TokenMatch
from receiver.store.sqlite import SQLiteStore

__all__ = [
    "Claimed",
    "JobPage",
    "NewJob",
    "Recorded",
    "Router",
    "SQLiteStore",
    "Store",
    "TokenMatch",
    "store_for",
]


def store_for(database_url: str) -> Store:
    """The Store for `database_url` (not yet opened)."""
    if database_url.startswith("sqlite:"):
        return SQLiteStore(database_url)
    if database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "PostgreSQL support is not available in this version yet; use a sqlite:/// URL"
        )
    raise ConfigError(f"unsupported RECEIVER_DATABASE_URL scheme: {database_url.split(':', 1)[0]}")
