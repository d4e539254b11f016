"""The `receiver` command. One module per subcommand (or family of them); each adds
its parser in `register` and sets `run`.

Every option is also read from the `RECEIVER_*` variable named in its help; the
option wins. With `--url`/`RECEIVER_URL` the reading subcommands use a running
receiver's admin API, else the database directly.

Exit codes: 0 success; 1 the job failed (or a `doctor` check failed); 2 bad usage or
configuration (a refused admin token too); 3 the store, or the receiver at RECEIVER_URL,
is unavailable; 4 nothing found (no such job, nothing to replay); 5 `--wait` gave up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from receiver.cli import (
    bench,
    deliveries,
    doctor,
    events,
    jobs,
    migrate,
    prune,
    quarantine,
    replay,
    serve,
    simulate,
    submit,
    trigger,
    worker,
)
from receiver.cli.common import EXIT_STORE, EXIT_USAGE
from receiver.cli.replay import EXIT_NOTHING
from receiver.cli.source import NotFound, Unreachable
from receiver.errors import ConfigError, ReceiverError, StoreUnavailable, UnknownProvider

__all__ = ["main"]

# Order is the order `receiver --help` lists them in.
_COMMANDS = (
    serve,
    worker,
    submit,
    jobs,
    events,
    deliveries,
    quarantine,
    replay,
    doctor,
    migrate,
    prune,
    simulate,
    trigger,
    bench,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="receiver",
        description="Receive providers' callbacks for generation jobs and fire your handlers.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except (ConfigError, UnknownProvider) as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return EXIT_STORE
    except StoreUnavailable as exc:
        print(f"receiver: store unavailable: {exc}", file=sys.stderr)
        return EXIT_STORE
    except NotFound as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except ReceiverError as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
