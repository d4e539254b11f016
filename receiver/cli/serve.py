"""`receiver serve`: the HTTP receiver with its handlers and polls."""

from __future__ import annotations

import argparse
import asyncio
import errno
import math
import socket
from typing import Any
from urllib.parse import urlsplit

from receiver.cli.common import (
    EXIT_OK,
    check_store,
    common_options,
    keep_files_private,
    require_database_dir,
    setting,
    settings_from,
    warn_without_handlers,
)
from receiver.errors import ConfigError
from receiver.logs import cli_log, configure, held, release

__all__ = ["UVICORN_OPTIONS", "register"]

# Shared with the benchmark's floor (receiver.bench.floor), so both run on the same uvicorn.
UVICORN_OPTIONS: dict[str, Any] = {
    "access_log": False,
    "proxy_headers": False,  # RECEIVER_TRUSTED_PROXIES alone decides (receiver.ratelimit)
    "ws": "none",  # no route is a WebSocket; not loading the library shortens the start
}


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the receiver (HTTP, handlers and polls)")
    common_options(serve)
    setting(serve, "--host", "RECEIVER_HOST", "address to listen on (default 127.0.0.1)")
    setting(serve, "--port", "RECEIVER_PORT", "port to listen on (default 8000)")
    setting(
        serve,
        "--public-url",
        "RECEIVER_PUBLIC_URL",
        "URL providers call back (default http://RECEIVER_HOST:RECEIVER_PORT)",
    )
    setting(serve, "--handlers", "RECEIVER_HANDLERS", "module of your handlers (default handlers)")
    setting(
        serve,
        "--log-level",
        "RECEIVER_LOG_LEVEL",
        "DEBUG, INFO (one line per callback), WARNING (default) or ERROR",
    )
    setting(
        serve,
        "--log-format",
        "RECEIVER_LOG_FORMAT",
        "json, text, or auto (default: text on a terminal, JSON lines otherwise)",
    )
    serve.add_argument(
        "--no-worker",
        dest="RECEIVER_NO_WORKER",
        action="store_const",
        const="true",
        default=None,
        help="only ingest: handlers and polls run in `receiver worker` [env: RECEIVER_NO_WORKER]",
    )
    setting(
        serve,
        "--shutdown-grace",
        "RECEIVER_SHUTDOWN_GRACE",
        "seconds after SIGTERM for in-flight requests and running handlers (default 30)",
    )
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app
    from receiver.connections import guarded_protocol, limits_for
    from receiver.runtime import Runtime
    from receiver.serving import GracefulServer
    from receiver.store import display_url

    with held() as early:  # unknown-setting warnings, written once the format is known
        settings = settings_from(args)
    keep_files_private()
    configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    release(early)
    require_database_dir(settings)
    asyncio.run(check_store(settings))
    host = urlsplit(settings.public_url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        cli_log.warning(
            "RECEIVER_PUBLIC_URL is %s; providers on the internet cannot call back there",
            settings.public_url,
        )
    limits, warning = limits_for(settings)
    if warning:
        cli_log.warning("%s", warning)
    sock = listen(settings.host, settings.port)
    app = create_app(settings, run_loops=not settings.no_worker, tune_gc=True)
    runtime: Runtime = app.state.runtime
    if not settings.no_worker:  # handlers run here: say if there are none of the user's
        warn_without_handlers(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # ours, set above: JSON or text, secrets redacted
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        http=guarded_protocol(limits),  # deadlines and connection caps: receiver.connections
        **UVICORN_OPTIONS,
    )

    def serving() -> None:
        cli_log.info(
            "serving on %s (public URL %s, database %s%s; at most %d connections,"
            " %d per client address)",
            address(settings.host, settings.port),
            settings.public_url,
            display_url(settings.database_url),
            ", ingest only" if settings.no_worker else "",
            limits.max_connections,
            limits.max_per_client,
        )

    # On SIGTERM the loops take no new work at once; the app's lifespan then gives running
    # handlers what is left of the grace, and leaves the rest pending for the next start.
    server = GracefulServer(
        config,
        on_shutdown=[runtime.dispatcher.halt, runtime.poller.halt],
        on_started=[serving],
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK


def address(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """The bound socket `serve` listens on; ConfigError naming the address and the settings.

    Binding before anything else starts means "serving on" is only ever said of a
    socket we hold, and a port already taken is one line instead of a traceback.
    """
    from receiver.serving import bind

    try:
        return bind(host, port)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(
            f"cannot listen on {address(host, port)}: {reason}"
            " (RECEIVER_HOST/RECEIVER_PORT, or --host/--port)"
        ) from None
