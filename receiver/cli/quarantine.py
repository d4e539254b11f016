"""`receiver quarantine`: requests the receiver refused, and why."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from receiver.cli.common import EXIT_OK, print_json
from receiver.cli.output import Table, age, clean, colour_enabled, paint
from receiver.cli.source import client_options, open_source

__all__ = ["REASONS", "register"]

# What each stored reason means, in the words an operator would use.
REASONS = {
    "missing_secret": "no x-webhook-secret header",
    "wrong_secret": "wrong webhook secret",
    "unknown_token": "unknown job token in the URL",
    "unknown_provider": "no such provider",
    "static_route_disabled": "no static secret configured for this provider",
    "bad_json": "body is not JSON",
    "not_an_object": "body is not a JSON object",
    "bad_payload": "body is not a shape this provider sends",
    "task_mismatch": "task id differs from the job's",
    "no_task_id": "no valid task id in the body",
    "no_status_api": "provider has no status API to pull",
    "too_large": "body too large",
    "bad_content_length": "bad Content-Length",
    "missing_signature": "a Standard Webhooks header is missing",
    "bad_timestamp": "webhook-timestamp is not Unix seconds",
    "stale_signature": "webhook-timestamp too old (sender's clock behind, or a replay)",
    "future_signature": "webhook-timestamp in the future (sender's clock ahead)",
    "bad_signature": "no signature matches (wrong secret or altered body)",
}


def register(commands: Any) -> None:
    quarantine = commands.add_parser(
        "quarantine", help="rejected requests and why (missing header, wrong secret, bad body)"
    )
    client_options(quarantine)
    quarantine.add_argument("--limit", type=int, default=100, help="at most this many")
    quarantine.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with open_source(args) as source:
            items = await source.quarantine(limit=max(1, min(args.limit, 1000)))
        if args.json:
            print_json({"items": items})
            return EXIT_OK
        colour = colour_enabled()
        table = Table(
            ["AGE", "PROVIDER", "ANSWER", "REASON", "REQUEST", "CLIENT", "BODY"], right=["AGE"]
        )
        for item in items:
            # A stored reason may carry a detail after the word: "stale_signature: ...".
            word, colon, detail = item.reason.partition(": ")
            reason = REASONS.get(word, word) + (f": {detail}" if colon else "")
            table.add(
                age(item.received_at),
                clean(item.provider),
                paint(str(item.status_code), "red", enabled=colour),
                clean(reason),
                clean(f"{item.method} {item.path}{'?' + item.query if item.query else ''}"),
                clean(item.client),
                clean(item.body[:40].decode("utf-8", "replace"))
                + ("…" if len(item.body) > 40 else ""),
            )
        print(table.render(colour=colour))
        return EXIT_OK

    return asyncio.run(work())
