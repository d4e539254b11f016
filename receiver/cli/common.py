"""What every `receiver` subcommand shares: options read from `RECEIVER_*`, exit codes,
direct database access and output helpers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, StoreUnavailable
from receiver.models import Job

if TYPE_CHECKING:
    from receiver.runtime import Runtime

__all__ = [
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "NoDatabase",
    "age",
    "check_store",
    "common_options",
    "keep_files_private",
    "pairs",
    "print_json",
    "progress",
    "require_database",
    "require_database_dir",
    "setting",
    "settings_from",
    "value",
    "warn_without_handlers",
    "with_runtime",
]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


class NoDatabase(StoreUnavailable):
    """The SQLite file a reading command names, or the directory `serve` would make it in,
    does not exist (exit code 3)."""


def _sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file the settings name; None for PostgreSQL or `:memory:`."""
    if not settings.database_url.startswith("sqlite:"):
        return None
    from receiver.store.sqlite import sqlite_path

    path = sqlite_path(settings.database_url)
    return None if path == ":memory:" else Path(path).absolute()


def require_database(settings: Settings) -> None:
    """NoDatabase unless the SQLite file exists: reading commands never create one.

    Run in the wrong directory, `receiver jobs` would otherwise make an empty database
    (and a token file) there and print an empty table, as if there were no jobs.
    """
    path = _sqlite_file(settings)
    if path is not None and not path.is_file():
        raise NoDatabase(
            f"no database at {path}: run `receiver serve` there first, or set RECEIVER_DATABASE_URL"
        )


def require_database_dir(settings: Settings) -> None:
    """NoDatabase (exit 3) unless the SQLite file's directory exists: a mistyped path is
    not created.

    Creating the database file itself is what `serve` is for; creating directories on the
    way would turn a typo in RECEIVER_DATABASE_URL into a fresh, empty receiver.
    """
    path = _sqlite_file(settings)
    if path is not None and not path.parent.is_dir():
        raise NoDatabase(
            f"no directory {path.parent} for the database: create it, or fix RECEIVER_DATABASE_URL"
        )


def setting(parser: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    """An option that falls back to the `env` variable; `--help` names the variable."""
    metavar = flag.lstrip("-").upper().replace("-", "_")
    parser.add_argument(
        flag, dest=env, default=None, metavar=metavar, help=f"{help} [env: {env}]", **kw
    )


def common_options(parser: argparse.ArgumentParser) -> None:
    setting(parser, "--database-url", "RECEIVER_DATABASE_URL", "database URL (sqlite:///path)")
    setting(parser, "--config", "RECEIVER_CONFIG", "settings file (default ./receiver.toml)")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key.startswith("RECEIVER_") and value is not None
    }
    return load_settings({**os.environ, **overrides})


def keep_files_private() -> None:
    """Every file this process creates from now on is its user's alone (umask 077).

    The database, its -wal and -shm files, the admin token and the heartbeat hold or
    reveal what others on the machine must not read. Handlers' files inherit this too.
    """
    os.umask(0o077)


def value(text: str) -> Any:
    """JSON when the text parses (5, true, {...}), else the text itself."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    found = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}")
        found[key] = value(raw)
    return found


def print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(data)).decode() + "\n")


def age(seconds: float) -> str:
    seconds = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def progress(job: Job) -> str:
    return "-" if job.progress is None else f"{job.progress:4.0%}"


async def with_runtime(
    settings: Settings,
    work: Callable[[Any], Coroutine[Any, Any, int]],
    *,
    with_handlers: bool = False,
) -> int:
    from receiver.dispatch import Registry
    from receiver.runtime import Runtime

    # Direct mode: the CLI works on the database itself; a running `serve` picks up the rest.
    # Submitting routes events to handlers, so it must know them; reading does not.
    runtime = Runtime.build(settings, handlers=None if with_handlers else Registry())
    await runtime.store.open()
    try:
        return await work(runtime)
    finally:
        await runtime.client.aclose()
        await runtime.store.close()


async def check_store(settings: Settings) -> None:
    """Open and close the store, so a bad URL is one clear line instead of a traceback."""
    from receiver.store import store_for

    store = store_for(settings.database_url)
    await store.open()
    await store.close()


def warn_without_handlers(runtime: Runtime) -> None:
    """One line on stderr when none of the user's handlers will run (`serve`, `worker`)."""
    from receiver.registration import handlers_warning

    warning = handlers_warning(runtime.settings.handlers, runtime.handlers, runtime.builtins)
    if warning:
        from receiver.logs import cli_log

        cli_log.warning("%s", warning)  # in RECEIVER_LOG_FORMAT, as serve's other lines
