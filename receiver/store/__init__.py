"""Durable storage behind one seam; `store_for` picks the backend from the database URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from receiver.errors import ConfigError
from receiver.store.base import (
    Claim,
    Claimed,
    JobPage,
    NewJob,
    Recorded,
    Router,
    Store,
    TokenMatch,
    Write,
)
from receiver.store.sqlite import SQLiteStore

__all__ = [
    "Claim",
    "Claimed",
    "JobPage",
    "NewJob",
    "Recorded",
    "Router",
    "SQLiteStore",
    "Store",
    "TokenMatch",
    "Write",
    "display_url",
    "store_for",
]


def store_for(database_url: str, *, timeout: float = 5.0) -> Store:
    """The Store for `database_url` (not yet opened); `timeout` bounds waits for a lock."""
    if database_url.startswith("sqlite:"):
        return SQLiteStore(database_url, busy_timeout_ms=max(1, round(timeout * 1000)))
    if database_url.startswith(("postgresql://", "postgres://")):
        try:
            from receiver.store.postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                "a postgresql:// URL needs asyncpg: pip install 'receiver[postgres]'"
            ) from None
        return PostgresStore(database_url)
    raise ConfigError(f"unsupported RECEIVER_DATABASE_URL scheme: {database_url.split(':', 1)[0]}")


def display_url(database_url: str) -> str:
    """The URL with any password replaced, fit for logs and messages."""
    parts = urlsplit(database_url)
    if parts.password is None:
        return database_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
