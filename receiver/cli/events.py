"""`receiver events JOB_ID`: every event of a job, whatever became of it."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from receiver.cli.common import EXIT_OK, print_json
from receiver.cli.output import Table, bar, clean, colour_enabled, paint, status_colour, when
from receiver.cli.source import client_options, open_source

__all__ = ["register"]


def register(commands: Any) -> None:
    events = commands.add_parser(
        "events", help="a job's events, oldest first, with their source and disposition"
    )
    client_options(events)
    events.add_argument("job_id", metavar="JOB_ID")
    events.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with open_source(args) as source:
            events = await source.events(args.job_id)
        if args.json:
            print_json({"items": events})
            return EXIT_OK
        colour = colour_enabled()
        table = Table(["ID", "WHEN", "SOURCE", "STATUS", "RAW", "PROGRESS", "DISPOSITION"])
        for event in events:
            table.add(
                event.id,
                when(event.received_at),
                event.source,
                paint(event.status.value, status_colour(event.status), enabled=colour),
                clean(event.raw_status),
                bar(event.progress, width=10),
                event.disposition.value,
            )
        print(table.render(colour=colour))
        return EXIT_OK

    return asyncio.run(work())
