"""`receiver prune`: delete now what is past the retention, as the background pruner does.

It works on the database directly, in the same small batches, so it is safe beside a
running receiver. `--dry-run` counts what would go, per table, and deletes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from receiver.cli.common import EXIT_OK, common_options, print_json, setting, settings_from

__all__ = ["register"]


def register(commands: Any) -> None:
    prune = commands.add_parser(
        "prune", help="delete raw requests, events, deliveries and quarantine past the retention"
    )
    common_options(prune)
    setting(
        prune,
        "--retention",
        "RECEIVER_RETENTION",
        "age past which rows go: 30d (default), 12h, 90m or seconds; 0 keeps everything",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    prune.add_argument(
        "--jobs",
        action="store_true",
        help="also delete the ended jobs themselves (with their files' records)",
    )
    prune.add_argument("--json", action="store_true", help="print the counts as JSON")
    prune.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from receiver.retention import prune_all
    from receiver.store import store_for

    settings = settings_from(args)
    retention = settings.retention_seconds()
    if retention <= 0:
        print("receiver: RECEIVER_RETENTION is 0: everything is kept, nothing pruned")
        return EXIT_OK

    async def work() -> dict[str, int]:
        store = store_for(settings.database_url, timeout=settings.store_timeout)
        await store.open()
        try:
            report = await prune_all(
                store, before=time.time() - retention, jobs=args.jobs, dry_run=args.dry_run
            )
        finally:
            await store.close()
        return report.counts

    counts = asyncio.run(work())
    if args.json:
        print_json({"dry_run": args.dry_run, "counts": counts})
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    width = max(len(table) for table in counts)
    for table, count in counts.items():
        if table != "jobs" or args.jobs:
            print(f"{verb} {count:>9} {table:<{width}}")
    return EXIT_OK
