"""`receiver migrate`: create or upgrade the database schema.

SQLite is also migrated by `serve` at start (one process owns the file). PostgreSQL is
migrated only here: several processes share it, so the schema moves once, as a deploy
step (the compose `migrate` service, the Kubernetes Job), and `serve` / `worker` refuse
to start on a schema that is behind.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from receiver.cli.common import EXIT_OK, common_options, require_database_dir, settings_from

__all__ = ["register"]


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    common_options(migrate)
    migrate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from receiver.store import display_url, store_for

    settings = settings_from(args)
    require_database_dir(settings)
    applied = asyncio.run(store_for(settings.database_url).migrate())
    for name in applied:
        print(f"applied {name}")
    print(f"schema up to date: {display_url(settings.database_url)}")
    return EXIT_OK
