"""The `receiver` command: serve, submit, jobs, job, migrate, simulate.

Every option is also read from the `RECEIVER_*` variable named in its help; the
option wins. Exit codes: 0 success, 1 the job failed, 2 bad usage or configuration,
3 the store is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import httpx
import msgspec

from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, StoreUnavailable, UnknownProvider
from receiver.models import Job
from receiver.providers import PROVIDERS

__all__ = ["main"]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


def _setting(parser: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    metavar = flag.lstrip("-").upper().replace("-", "_")
    parser.add_argument(
        flag, dest=env, default=None, metavar=metavar, help=f"{help} [env: {env}]", **kw
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "--database-url", "RECEIVER_DATABASE_URL", "database URL (sqlite:///path)")
    _setting(parser, "--config", "RECEIVER_CONFIG", "settings file (default ./receiver.toml)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="receiver",
        description="Receive providers' callbacks for generation jobs and fire your handlers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the receiver (HTTP, handlers and polls)")
    _common(serve)
    _setting(serve, "--host", "RECEIVER_HOST", "address to listen on (default 127.0.0.1)")
    _setting(serve, "--port", "RECEIVER_PORT", "port to listen on (default 8000)")
    _setting(serve, "--public-url", "RECEIVER_PUBLIC_URL", "URL providers call back")
    _setting(serve, "--handlers", "RECEIVER_HANDLERS", "module of your handlers (default handlers)")
    _setting(serve, "--log-level", "RECEIVER_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")

    submit = commands.add_parser("submit", help="submit a job to a provider")
    _common(submit)
    submit.add_argument("provider", choices=sorted(PROVIDERS), help="provider to submit to")
    submit.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD=VALUE",
        help="provider fields; VALUE is read as JSON when it parses (5, true), else as text",
    )
    submit.add_argument("--input", help="provider fields as one JSON object")
    submit.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="metadata for handlers"
    )
    submit.add_argument("--task-id", help="track a task already submitted elsewhere")
    _setting(submit, "--public-url", "RECEIVER_PUBLIC_URL", "URL providers call back")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    _common(jobs)
    jobs.add_argument("--status", help="queued, running, succeeded, failed or cancelled")
    jobs.add_argument("--provider", choices=sorted(PROVIDERS))
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true", help="print JSON")

    job = commands.add_parser("job", help="show one job with its events and deliveries")
    _common(job)
    job.add_argument("job_id", metavar="ID")
    job.add_argument("--json", action="store_true", help="print JSON")

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    _common(migrate)

    simulate = commands.add_parser("simulate", help="run the provider simulator (local sandbox)")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=9000)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key.startswith("RECEIVER_") and value is not None
    }
    return load_settings({**os.environ, **overrides})


def _value(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}")
        pairs[key] = _value(value)
    return pairs


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def _age(seconds: float) -> str:
    seconds = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _progress(job: Job) -> str:
    return "-" if job.progress is None else f"{job.progress:4.0%}"


async def _with_runtime(
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


async def _check_store(settings: Settings) -> None:
    from receiver.store import store_for

    store = store_for(settings.database_url)
    await store.open()
    await store.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_check_store(settings))  # a clear one-line error instead of a traceback
    host = httpx.URL(settings.public_url).host
    if host in ("localhost", "::1") or host.startswith("127."):
        print(
            f"receiver: warning: RECEIVER_PUBLIC_URL is {settings.public_url}; providers on the"
            " internet cannot call back there",
            file=sys.stderr,
        )
    app = create_app(settings)
    print(
        f"receiver: serving on http://{settings.host}:{settings.port}"
        f" (public URL {settings.public_url}, database {settings.database_url})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    fields = _pairs(args.fields, "a field")
    if args.input:
        decoded = _value(args.input)
        if not isinstance(decoded, dict):
            raise ConfigError("--input must be a JSON object")
        fields = {**decoded, **fields}
    metadata = _pairs(args.metadata, "--metadata")

    async def work(runtime: Any) -> int:
        if args.task_id:
            job = await runtime.submitter.track(args.provider, args.task_id, metadata=metadata)
        else:
            submitted = await runtime.submitter.submit(
                args.provider, fields, metadata=metadata, local_files=True
            )
            job = submitted.job
        if args.json:
            _print_json(job)
        else:
            print(f"{job.id}  {job.provider}  {job.status.value}  task {job.task_id or '-'}")
            if job.error:
                print(f"error: {job.error}")
            if job.result_url:
                print(job.result_url)
        return EXIT_JOB_FAILED if job.status.value == "failed" else EXIT_OK

    return asyncio.run(_with_runtime(settings, work, with_handlers=True))


def _cmd_jobs(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(runtime: Any) -> int:
        page = await runtime.store.list_jobs(
            status=args.status, provider=args.provider, limit=max(1, min(args.limit, 1000))
        )
        if args.json:
            _print_json({"items": page.items, "next": page.next})
            return EXIT_OK
        print(f"{'ID':32} {'PROVIDER':11} {'STATUS':10} {'PROGRESS':>8} {'AGE':>5}")
        for job in page.items:
            print(
                f"{job.id:32} {job.provider:11} {job.status.value:10} "
                f"{_progress(job):>8} {_age(job.created_at):>5}"
            )
        return EXIT_OK

    return asyncio.run(_with_runtime(settings, work))


def _cmd_job(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(runtime: Any) -> int:
        job = await runtime.store.get_job(args.job_id)
        if job is None:
            print(f"no job {args.job_id}", file=sys.stderr)
            return EXIT_USAGE
        events = await runtime.store.list_events(job.id)
        deliveries = await runtime.store.list_deliveries(job_id=job.id)
        if args.json:
            _print_json({"job": job, "events": events, "deliveries": deliveries})
            return EXIT_OK
        print(f"{job.id}  {job.provider}  task {job.task_id or '-'}")
        print(f"status {job.status.value}  progress {_progress(job)}")
        for label, value in (
            ("result", job.result_url),
            ("preview", job.preview_url),
            ("error", job.error),
        ):
            if value:
                print(f"{label} {value}")
        print("events:")
        for event in events:
            progress = "-" if event.progress is None else f"{event.progress:.0%}"
            print(
                f"  {_age(event.received_at):>5} ago  {event.source:8} {event.status.value:10}"
                f" {progress:>5}  raw={event.raw_status}  {event.disposition.value}"
            )
        print("deliveries:")
        for delivery in deliveries:
            error = f"  {delivery.last_error}" if delivery.last_error else ""
            print(
                f"  {delivery.id}  {delivery.handler}  {delivery.state.value}"
                f"  attempts={delivery.attempts}{error}"
            )
        return EXIT_OK

    return asyncio.run(_with_runtime(settings, work))


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(runtime: Any) -> int:
        print(f"schema up to date: {settings.database_url}")
        return EXIT_OK

    return asyncio.run(_with_runtime(settings, work))


def _cmd_simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.simulator import create_simulator

    print(
        f"provider simulator on http://{args.host}:{args.port}/<provider> "
        f"(providers: {', '.join(sorted(PROVIDERS))})"
    )
    uvicorn.run(create_simulator(), host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


_COMMANDS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "serve": _cmd_serve,
    "submit": _cmd_submit,
    "jobs": _cmd_jobs,
    "job": _cmd_job,
    "migrate": _cmd_migrate,
    "simulate": _cmd_simulate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, UnknownProvider) as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"receiver: store unavailable: {exc}", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
