"""The `receiver` command. One module per subcommand (or family of them); each adds
its parser in `register` and sets `run`.

Every option is also read from the `RECEIVER_*` variable named in its help; the
option wins. With `--url`/`RECEIVER_URL` the reading subcommands use a running
receiver's admin API, else the database directly.

Exit codes: 0 success; 1 the job failed (or a `doctor` check failed); 2 bad usage or
configuration (a refused admin token, an unknown provider or field, an address already
in use too); 3 the store, the database file, or the receiver at RECEIVER_URL is
unavailable; 4 nothing found (no such job, nothing to replay); 5 `--wait` gave up;
6 the job would pass a spend budget (nothing was submitted).

Once a long-running command (`serve`, `worker`) has configured logging, what it says on
stderr, the error it stops on included, goes through RECEIVER_LOG_FORMAT.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from receiver.cli import (
    bench,
    costs,
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
from receiver.cli.common import EXIT_STORE, EXIT_USAGE, NoDatabase
from receiver.cli.replay import EXIT_NOTHING
from receiver.cli.source import NotFound, OverBudget, Unreachable
from receiver.cli.submit import EXIT_BUDGET
from receiver.costs import BudgetExceeded
from receiver.errors import ConfigError, ReceiverError, StoreUnavailable, UnknownProvider
from receiver.logs import cli_log, configured

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
    costs,
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
        return _fail(str(exc), EXIT_USAGE)
    except (Unreachable, NoDatabase) as exc:
        return _fail(str(exc), EXIT_STORE)
    except StoreUnavailable as exc:
        return _fail(f"store unavailable: {exc}", EXIT_STORE)
    except NotFound as exc:
        return _fail(str(exc), EXIT_NOTHING)
    except (BudgetExceeded, OverBudget) as exc:
        return _fail(str(exc), EXIT_BUDGET)
    except ReceiverError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> int:
    """Say why the command stops, as log lines once logging is configured; return `code`.

    A message of several lines (every bad handler, receiver.registration) is said one line
    at a time, each a line of its own in the log.
    """
    for line in message.splitlines() or [message]:
        if configured():
            cli_log.error(line)
        else:
            print(f"receiver: {line}", file=sys.stderr)
    return code
