"""`receiver replay`: run dead (or done) deliveries again, under their own idempotency key.

A replayed delivery keeps its id, so a handler that deduplicates on `delivery.id` sees
the same key; its attempts start again from zero.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from receiver.cli.common import EXIT_OK, EXIT_USAGE, print_json
from receiver.cli.output import clean, colour_enabled, paint
from receiver.cli.source import client_options, open_source

__all__ = ["EXIT_NOTHING", "register"]

EXIT_NOTHING = 4  # nothing matched: no delivery was replayed


def register(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="run dead deliveries again: DELIVERY_ID | --job ID | --handler NAME | --all-dead",
    )
    client_options(replay)
    replay.add_argument(
        "delivery_id", metavar="DELIVERY_ID", nargs="?", help="one delivery (dead or done)"
    )
    replay.add_argument("--job", metavar="ID", help="the dead deliveries of this job")
    replay.add_argument("--handler", metavar="NAME", help="the dead deliveries of this handler")
    replay.add_argument("--all-dead", action="store_true", help="every dead delivery")
    replay.add_argument(
        "--include-done", action="store_true", help="with --job/--handler: done ones too"
    )
    replay.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    by_filter = args.job is not None or args.handler is not None
    chosen = [args.delivery_id is not None, by_filter, args.all_dead]
    if sum(chosen) != 1:
        print(
            "receiver replay: name one of DELIVERY_ID, --job/--handler, or --all-dead",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.include_done and not by_filter:
        print("receiver replay: --include-done goes with --job or --handler", file=sys.stderr)
        return EXIT_USAGE

    async def work() -> int:
        async with open_source(args) as source:
            replayed = await source.replay(
                delivery_id=args.delivery_id,
                job_id=args.job,
                handler=args.handler,
                include_done=args.include_done,
            )
        if args.json:
            print_json({"items": replayed})
        else:
            colour = colour_enabled()
            for delivery in replayed:
                print(f"{delivery.id}  {clean(delivery.handler)}  job {delivery.job_id}  pending")
            summary = f"replayed {len(replayed)} deliver{'y' if len(replayed) == 1 else 'ies'}"
            print(paint(summary, "green" if replayed else "yellow", enabled=colour))
        return EXIT_OK if replayed else EXIT_NOTHING

    return asyncio.run(work())
