"""`receiver simulate`: the provider simulator as a local sandbox server.

Its switches (failures, duplicates, late and lost callbacks, wrapped bodies, refused
creates, expiring result links, timing) are flags here, and can be changed while it runs with
`POST /_sim/config` (for example `{"fail": true}`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from receiver.cli.common import EXIT_OK, pairs
from receiver.errors import ConfigError
from receiver.logs import configure
from receiver.providers import PROVIDERS

__all__ = ["register"]


def register(commands: Any) -> None:
    simulate = commands.add_parser("simulate", help="run the provider simulator (local sandbox)")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=9000)
    simulate.add_argument(
        "--step-delay", type=float, default=0.05, help="seconds between status changes"
    )
    simulate.add_argument("--fail", action="store_true", help="jobs end failed")
    simulate.add_argument("--duplicate", action="store_true", help="every callback is sent twice")
    simulate.add_argument(
        "--late", action="store_true", help="one more progress callback after the final one"
    )
    simulate.add_argument("--lose", action="store_true", help="callbacks are never sent")
    simulate.add_argument(
        "--wrapped", action="store_true", help="rixapi callbacks in the {code, msg, data} form"
    )
    simulate.add_argument(
        "--create-error", type=int, metavar="STATUS", help="create calls answer this HTTP status"
    )
    simulate.add_argument(
        "--expire-results",
        type=int,
        default=0,
        metavar="N",
        help="the first N result links of each task answer 410 until the status API renews them",
    )
    simulate.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="PROVIDER=KEY",
        help="the key a provider expects (default: any non-empty key)",
    )
    simulate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import msgspec
    import uvicorn

    from receiver.simulator import SimConfig, create_simulator

    keys = {name: str(key) for name, key in pairs(args.api_key, "--api-key").items()}
    unknown = set(keys) - set(PROVIDERS)
    if unknown:
        raise ConfigError(f"--api-key: unknown provider {sorted(unknown)}")
    try:
        config = msgspec.convert(
            {
                "api_keys": keys,
                "step_delay": args.step_delay,
                "fail": args.fail,
                "duplicate": args.duplicate,
                "late": args.late,
                "lose": args.lose,
                "wrapped": args.wrapped,
                "create_error": args.create_error,
                "expire_results": args.expire_results,
            },
            SimConfig,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"simulate: {exc}") from None
    switches = [
        name for name in ("fail", "duplicate", "late", "lose", "wrapped") if getattr(args, name)
    ]
    print(
        f"provider simulator on http://{args.host}:{args.port}/<provider> "
        f"(providers: {', '.join(sorted(PROVIDERS))}; switches: {', '.join(switches) or 'none'})",
        flush=True,
    )
    # Its own warnings (a callback that could not be delivered) on stderr, tokens redacted.
    configure("WARNING", os.environ.get("RECEIVER_LOG_FORMAT", "auto"))
    uvicorn.run(create_simulator(config), host=args.host, port=args.port, log_level="warning")
    return EXIT_OK
