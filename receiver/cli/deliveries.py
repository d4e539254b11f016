"""`receiver deliveries`: handler deliveries and, with `--dead`, the dead letters."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from receiver.cli.common import EXIT_OK, print_json
from receiver.cli.output import Table, age, clean, colour_enabled, paint, state_colour
from receiver.cli.source import client_options, open_source
from receiver.failures import split_error
from receiver.models import Delivery, DeliveryState

__all__ = ["register", "tracebacks"]


def register(commands: Any) -> None:
    deliveries = commands.add_parser(
        "deliveries", help="handler deliveries with attempts and errors (--dead: dead letters)"
    )
    client_options(deliveries)
    which = deliveries.add_mutually_exclusive_group()
    which.add_argument(
        "--dead", action="store_true", help="only dead deliveries (same as --state dead)"
    )
    which.add_argument("--state", choices=[s.value for s in DeliveryState], help="only this state")
    deliveries.add_argument("--job", metavar="ID", help="only this job's deliveries")
    deliveries.add_argument("--limit", type=int, default=1000, help="at most this many")
    deliveries.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    state = DeliveryState.DEAD if args.dead else (DeliveryState(args.state) if args.state else None)

    async def work() -> int:
        async with open_source(args) as source:
            if args.job is not None:
                await source.get_job(args.job)  # NotFound (exit 4), not an empty table
            items = await source.deliveries(
                job_id=args.job, state=state, limit=max(1, min(args.limit, 10000))
            )
        if args.json:
            print_json({"items": items})
            return EXIT_OK
        colour = colour_enabled()
        table = Table(
            ["ID", "JOB", "HANDLER", "STATE", "ATTEMPTS", "AGE", "LAST ERROR"],
            right=["ATTEMPTS", "AGE"],
        )
        for d in items:
            table.add(
                d.id,
                d.job_id,
                clean(d.handler),
                paint(d.state.value, state_colour(d.state), enabled=colour),
                str(d.attempts),
                age(d.created_at),
                clean(split_error(d.last_error)[0]),
            )
        print(table.render(colour=colour))
        for line in tracebacks(items):
            print(line)
        if args.dead and items:
            print(paint("replay them with: receiver replay --all-dead", "dim", enabled=colour))
        return EXIT_OK

    return asyncio.run(work())


def tracebacks(deliveries: Sequence[Delivery]) -> list[str]:
    """Lines for under a table: each distinct traceback once, after the deliveries it is on."""
    shared: dict[str, list[str]] = {}
    for delivery in deliveries:
        trace = split_error(delivery.last_error)[1]
        if trace:
            shared.setdefault(trace, []).append(delivery.id)
    lines = []
    for trace, ids in shared.items():
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        lines += ["", f"{', '.join(ids[:3])}{more}:"]
        lines += ["  " + clean(line) for line in trace.splitlines()]
    return lines
