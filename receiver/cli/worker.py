"""`receiver worker`: run handlers and polls without HTTP, beside `serve --no-worker`.

Any number of workers may share one PostgreSQL database: deliveries and polls are
claimed under leases, and LISTEN/NOTIFY wakes an idle worker as soon as a receiver
commits work. Each keeps a heartbeat in the database (receiver.heartbeat): the work of
one that dies is taken over by the others within RECEIVER_WORKER_TIMEOUT. SIGTERM or
SIGINT stops claiming, lets running handlers finish (up to `--grace` seconds), puts the
rest back to pending, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from receiver.cli.common import (
    EXIT_OK,
    common_options,
    keep_files_private,
    require_database_dir,
    setting,
    settings_from,
    warn_without_handlers,
)
from receiver.config import Settings
from receiver.logs import cli_log, configure, held, release

__all__ = ["register", "work"]

log = logging.getLogger("receiver.worker")
_HEARTBEAT_EVERY = 5.0


def register(commands: Any) -> None:
    worker = commands.add_parser("worker", help="run handlers and polls (no HTTP)")
    common_options(worker)
    setting(worker, "--handlers", "RECEIVER_HANDLERS", "module of your handlers (default handlers)")
    setting(worker, "--log-level", "RECEIVER_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    setting(worker, "--log-format", "RECEIVER_LOG_FORMAT", "json, text, or auto (default)")
    setting(
        worker,
        "--heartbeat-file",
        "RECEIVER_HEARTBEAT_FILE",
        f"file touched every {_HEARTBEAT_EVERY:g}s while the worker runs (for liveness probes)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds running handlers get to finish at shutdown (default 30)",
    )
    worker.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with held() as early:
        settings = settings_from(args)
    keep_files_private()
    configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    release(early)
    require_database_dir(settings)
    return asyncio.run(work(settings, grace=args.grace))


async def work(settings: Settings, *, grace: float = 30.0) -> int:
    """Run the dispatcher, the poller and the pruner until SIGTERM or SIGINT; the exit code."""
    from receiver.runtime import Runtime
    from receiver.store import display_url

    runtime = Runtime.build(settings)
    warn_without_handlers(runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runtime.store.open()
        await runtime.start_heartbeat()
        await runtime.store.listen(runtime.wakers())
        tasks = [
            asyncio.create_task(runtime.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(runtime.poller.run(), name="poller"),
            asyncio.create_task(runtime.pruner.run(), name="pruner"),
        ]
        if settings.heartbeat_file:
            tasks.append(asyncio.create_task(_heartbeat(Path(settings.heartbeat_file))))
        cli_log.info(
            "worker running on %s (%d handlers)",
            display_url(settings.database_url),
            len(runtime.handlers.handlers),
        )
        await stop.wait()
        cli_log.info("worker stopping")
        await runtime.poller.stop()
        await runtime.dispatcher.stop(grace=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runtime.heartbeat.stop()
        await runtime.client.aclose()
        await runtime.store.close()
    return EXIT_OK


async def _heartbeat(path: Path) -> None:
    """Touch `path` while the event loop is alive; a stale file means a stuck worker."""
    while True:
        try:
            path.touch()
        except OSError as exc:
            log.warning("cannot touch heartbeat file %s: %s", path, exc)
        await asyncio.sleep(_HEARTBEAT_EVERY)
