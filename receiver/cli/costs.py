"""`receiver costs`: spend by provider and UTC day, and by a metadata key with `--by`.

A job counts its final cost once it ended and its estimate while it runs; prices come
from RECEIVER_<PROVIDER>_PRICE_PER_JOB and _PRICE_PER_SECOND (receiver.costs).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import re
import time
from typing import Any

from receiver.cli.common import EXIT_OK, print_json
from receiver.cli.output import Table, clean, colour_enabled
from receiver.cli.source import client_options, open_source
from receiver.config import parse_duration
from receiver.costs import DAY, Spend, day_start
from receiver.errors import ConfigError

__all__ = ["parse_since", "register"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def register(commands: Any) -> None:
    costs = commands.add_parser(
        "costs", help="spend by provider and day (and by a metadata key with --by)"
    )
    client_options(costs)
    costs.add_argument(
        "--since",
        default="7d",
        metavar="WHEN",
        help="a UTC date (2026-12-01) or a span back from today (7d, the default; 0 for all)",
    )
    costs.add_argument("--by", metavar="KEY", help="also split by this metadata key (customer)")
    costs.set_defaults(run=run)


def parse_since(text: str, *, at: float | None = None) -> float:
    """The start of the UTC day `text` names: a date, or a span back from `at` (0: all)."""
    if _DATE.match(text):
        try:
            return float(calendar.timegm(time.strptime(text, "%Y-%m-%d")))
        except ValueError:
            raise ConfigError(f"--since: {text!r} is not a date") from None
    span = parse_duration(text, name="--since")
    if span == 0:
        return 0.0
    # 1d is today, 7d today and the six days before it: whole UTC days.
    today = day_start(time.time() if at is None else at)
    return today - max(0.0, span - DAY)


def run(args: argparse.Namespace) -> int:
    since = parse_since(args.since)

    async def work() -> int:
        async with open_source(args) as source:
            items = await source.spend(since=since, by=args.by)
        total = sum(item.cost for item in items)
        if args.json:
            print_json({"since": since, "by": args.by, "items": items, "total": total})
        else:
            print(render(items, by=args.by, total=total))
        return EXIT_OK

    return asyncio.run(work())


def render(items: list[Spend], *, by: str | None, total: float) -> str:
    """A table of days, providers (and `by` values), then the total."""
    headers = ["DAY", "PROVIDER", *([by.upper()] if by else []), "JOBS", "ESTIMATED", "COST"]
    table = Table(headers, right=["JOBS", "ESTIMATED", "COST"])
    for item in items:
        value = [clean(item.value) if item.value is not None else "-"] if by else []
        table.add(
            item.day,
            item.provider,
            *value,
            str(item.jobs),
            _money(item.estimated),
            _money(item.cost),
        )
    colour = colour_enabled()
    return f"{table.render(colour=colour)}\ntotal {_money(total)}"


def _money(amount: float) -> str:
    return f"{amount:.2f}"
