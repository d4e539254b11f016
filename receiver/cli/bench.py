"""`receiver bench`: measure ingest against the stack's floor and adnanh/webhook, in one run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from receiver.bench.routes import ROUTES
from receiver.cli.common import EXIT_OK, EXIT_STORE, print_json

__all__ = ["register"]


def register(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmark ingest (throughput, latency, delivery, memory) against the stack's floor",
    )
    bench.add_argument("--concurrency", type=int, default=50, help="connections (default 50)")
    bench.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (default 5)"
    )
    bench.add_argument(
        "--generator",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="load generator: wrk when installed (auto), or the built-in asyncio one",
    )
    bench.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    bench.add_argument("--url", help="benchmark a receiver already running there")
    bench.add_argument("--secret", help="with --url: its RECEIVER_APIFRAME_WEBHOOK_SECRET")
    bench.add_argument(
        "--database-url",
        help="database for the started receiver (default a fresh SQLite file);"
        " with --url, where to check that every acknowledged callback is stored",
    )
    bench.add_argument(
        "--routes",
        default=",".join(ROUTES),
        help=f"route styles to load, comma-separated (default all: {','.join(ROUTES)})",
    )
    bench.add_argument(
        "--compare-postgres",
        metavar="URL",
        help="also run every route on this PostgreSQL database, for the ratio to SQLite",
    )
    bench.add_argument("--no-floor", action="store_true", help="skip the bare-ASGI floor")
    bench.add_argument("--no-webhook", action="store_true", help="skip adnanh/webhook")
    bench.add_argument("--no-delivery", action="store_true", help="skip delivery latency")
    bench.add_argument(
        "--soak", type=int, default=0, metavar="N", help="also take N callbacks, watching memory"
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from receiver.bench import Options, render, run_bench
    from receiver.errors import ConfigError

    if args.url is not None and not args.secret:
        raise ConfigError("--url needs --secret (the receiver's apiframe webhook secret)")
    if args.concurrency < 1 or args.duration <= 0:
        raise ConfigError("--concurrency must be at least 1 and --duration above 0")
    routes = tuple(route for route in ROUTES if route in args.routes.split(","))
    unknown = set(args.routes.split(",")) - set(ROUTES)
    if unknown or "static" not in routes:
        raise ConfigError(f"--routes takes static and any of {', '.join(ROUTES[1:])}")
    if args.url is not None and routes != ("static",):
        routes = ("static",)  # a receiver started elsewhere has none of the bench's jobs
    if args.generator == "wrk" and routes != ("static",):
        raise ConfigError("--generator wrk sends only the static route: add --routes static")
    compare = args.compare_postgres
    if compare is not None and (
        args.url is not None
        or not compare.startswith(("postgresql://", "postgres://"))
        or (args.database_url or "").startswith(("postgresql://", "postgres://"))
    ):
        raise ConfigError(
            "--compare-postgres takes a postgresql:// URL, with the default SQLite (no --url)"
        )
    options = Options(
        concurrency=args.concurrency,
        duration=args.duration,
        generator=args.generator,
        threads=args.threads,
        url=args.url,
        secret=args.secret,
        database_url=args.database_url,
        floor=not args.no_floor,
        webhook=not args.no_webhook,
        delivery=not args.no_delivery,
        soak_callbacks=args.soak,
        routes=routes,
        compare_postgres=compare,
    )

    def progress(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    report = run_bench(options, progress=progress)
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK if report.check.ok else EXIT_STORE
