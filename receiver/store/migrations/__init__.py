"""Numbered SQL migrations, one folder per backend."""

from __future__ import annotations

from importlib import resources

__all__ = ["Migration", "migrations"]


class Migration:
    """One numbered SQL file."""

    def __init__(self, version: int, name: str, sql: str):
        self.version = version
        self.name = name
        self.sql = sql


def migrations(backend: str) -> list[Migration]:
    """Every migration of `backend` (sqlite, postgres), oldest first."""
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append(Migration(version, entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)
