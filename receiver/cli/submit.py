"""`receiver submit`: send a job to a provider (or track one submitted elsewhere).

With `--wait` it follows the job (a live progress bar on a terminal, one line per change
otherwise) until it ends, then prints the result URL; a failed job exits 1, and one whose
estimated cost would pass a budget exits 6 with nothing submitted. The job is
moved by callbacks, so a receiver must be running: the one named by RECEIVER_URL, or a
`serve` on the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from receiver.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    pairs,
    print_json,
    setting,
    settings_from,
    value,
)
from receiver.cli.output import bar, clean, colour_enabled, paint, status_colour
from receiver.cli.source import Source, client_options, open_source
from receiver.errors import ConfigError, ProviderError, did_you_mean
from receiver.groups import COMMON_FIELDS, check_common
from receiver.models import Job, Status
from receiver.providers import PROVIDERS

__all__ = ["EXIT_BUDGET", "EXIT_TIMED_OUT", "check_fields", "register"]

EXIT_TIMED_OUT = 5  # --wait gave up before the job ended
EXIT_BUDGET = 6  # the job would pass a spend budget: nothing was submitted


def register(commands: Any) -> None:
    submit = commands.add_parser(
        "submit",
        help="submit a job to a provider (--wait to follow it)",
        description="Submit a job to a provider. Each provider's fields (FIELD=VALUE):",
        epilog="\n".join(f"  {name:11} {', '.join(fields_of(name))}" for name in sorted(PROVIDERS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client_options(submit)
    submit.add_argument(
        "provider",
        metavar="PROVIDER",
        help=f"provider to submit to ({', '.join(sorted(PROVIDERS))}), or a provider group"
        " (RECEIVER_GROUPS, [groups]), which takes the fields " + ", ".join(COMMON_FIELDS),
    )
    submit.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD=VALUE",
        help="provider fields; VALUE is read as JSON when it parses (5, true), else as text",
    )
    submit.add_argument("--input", help="provider fields as one JSON object")
    submit.add_argument(
        "--fields",
        dest="list_fields",
        action="store_true",
        help="list the provider's fields and which it requires",
    )
    submit.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="metadata for handlers"
    )
    submit.add_argument("--task-id", help="track a task already submitted elsewhere")
    submit.add_argument(
        "--notify-url",
        metavar="URL",
        help="also POST this job's events here, signed with RECEIVER_FORWARD_SECRET",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="submit at most once under KEY (1-255 printable ASCII): run again with the same"
        " key and request, it answers the same job without a second (paid) create",
    )
    setting(
        submit,
        "--public-url",
        "RECEIVER_PUBLIC_URL",
        "URL providers call back (default http://RECEIVER_HOST:RECEIVER_PORT)",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the job until it ends; exit 1 if it failed"
    )
    submit.add_argument(
        "--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds"
    )
    submit.add_argument(
        "--interval", type=float, default=0.5, help="with --wait: seconds between looks"
    )
    submit.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    submit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fields = pairs(args.fields, "a field")
    if args.input:
        decoded = value(args.input)
        if not isinstance(decoded, dict):
            raise ConfigError("--input must be a JSON object")
        fields = {**decoded, **fields}
    metadata = pairs(args.metadata, "--metadata")
    group = args.provider not in PROVIDERS and _group(args)
    if args.list_fields:
        print(
            f"{args.provider} fields: {', '.join(COMMON_FIELDS)}; required: prompt"
            if group
            else describe_fields(args.provider)
        )
        return EXIT_OK
    if args.task_id is None:  # before any job exists: a refusal leaves none
        if group:
            check_common(args.provider, fields)
        elif args.provider in PROVIDERS:
            check_fields(args.provider, fields)

    async def work() -> int:
        async with open_source(args, with_handlers=True) as source:
            job = await source.submit(
                args.provider,
                fields,
                metadata=metadata,
                task_id=args.task_id,
                notify_url=args.notify_url,
                idempotency_key=args.idempotency_key,
            )
            if args.wait and not job.status.terminal:
                if not (args.json or args.quiet):
                    print(f"{job.id}  {job.provider}  task {clean(job.task_id)}", flush=True)
                job = await follow(
                    source,
                    job,
                    timeout=args.timeout,
                    interval=args.interval,
                    quiet=args.json or args.quiet,
                )
                if not job.status.terminal:
                    if args.json:
                        print_json(job)
                    print(f"receiver: gave up waiting for {job.id}", file=sys.stderr)
                    return EXIT_TIMED_OUT
        if args.quiet:
            print(job.id)
        elif args.json:
            print_json(job)
        else:
            print_outcome(job, colour=colour_enabled())
        failed = job.status in (Status.FAILED, Status.CANCELLED)
        return EXIT_JOB_FAILED if failed else EXIT_OK

    return asyncio.run(work())


def _group(args: argparse.Namespace) -> bool:
    """Whether PROVIDER names a group of the settings; a name neither a provider nor a
    group is refused (exit 2) unless RECEIVER_URL's receiver, with its own settings, judges."""
    settings = settings_from(args)
    if args.provider in settings.groups:
        return True
    if settings.url:
        return False
    known = sorted({*PROVIDERS, *settings.groups})
    raise ConfigError(f"unknown provider or group {args.provider!r}; one of {', '.join(known)}")


def fields_of(provider: str) -> list[str]:
    """The provider's input fields as `--help` shows them: a local file's marked `@FILE`."""
    adapter = PROVIDERS[provider]
    return [
        f"{name}=@FILE" if name in adapter.file_fields else name for name in adapter.input_fields
    ]


def describe_fields(provider: str) -> str:
    """What `submit PROVIDER --fields` prints: the fields, and what each endpoint requires."""
    adapter = PROVIDERS[provider]
    if not adapter.input_fields:
        return f"{provider} declares no fields: any FIELD=VALUE is sent as given"
    lines = [f"{provider} fields: {', '.join(fields_of(provider))}"]
    endpoint = "endpoint" in adapter.input_fields
    lines.append(
        "required: "
        + ", ".join(adapter.required_fields({}))
        + (" (by default; another endpoint=... requires others)" if endpoint else "")
    )
    return "\n".join(lines)


def check_fields(provider: str, fields: dict[str, Any]) -> None:
    """ConfigError (exit 2) naming an unknown or missing field and listing the known ones.

    The provider would refuse the create anyway, but only after a job was recorded (and
    failed) with an error in its own words; this says it first, in the adapter's terms.
    """
    adapter = PROVIDERS[provider]
    known = list(adapter.input_fields)
    if not known:
        return
    listing = f"{provider} fields: {', '.join(fields_of(provider))}"
    for name in fields:
        if name not in known:
            hint = did_you_mean(name, known, cutoff=0.5)
            raise ConfigError(f"{provider} has no field {name!r}{hint}; {listing}")
    try:
        required = adapter.required_fields(fields)
    except (ProviderError, TypeError) as exc:
        raise ConfigError(f"{exc}; {listing}") from None
    missing = [name for name in required if fields.get(name) in (None, "")]
    if missing:
        raise ConfigError(f"{provider} needs {', '.join(missing)}; {listing}")


async def follow(source: Source, job: Job, *, timeout: float, interval: float, quiet: bool) -> Job:
    """Look at the job every `interval` until it ends or `timeout` passes; show each change."""
    live = sys.stdout.isatty() and not quiet
    colour = colour_enabled()
    deadline = time.monotonic() + timeout
    shown: tuple[Status, float | None] | None = None
    while True:
        state = (job.status, job.progress)
        if state != shown and not quiet:
            status = paint(f"{job.status.value:9}", status_colour(job.status), enabled=colour)
            line = f"{status} {bar(job.progress, width=30)}"
            if live:
                sys.stdout.write("\r\x1b[2K" + line)
                sys.stdout.flush()
            else:
                print(line, flush=True)
            shown = state
        if job.status.terminal or time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
        job = await source.get_job(job.id)
    if live:
        sys.stdout.write("\n")
    return job


def print_outcome(job: Job, *, colour: bool) -> None:
    status = paint(job.status.value, status_colour(job.status), enabled=colour)
    print(f"{job.id}  {job.provider}  {status}  task {clean(job.task_id)}")
    if job.error:
        print(paint(f"error: {clean(job.error)}", "red", enabled=colour))
    if job.result_url:
        print(clean(job.result_url))
