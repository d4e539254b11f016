"""`receiver jobs` (a table of jobs) and `receiver job ID` (one job's whole timeline)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from receiver.cli.common import EXIT_OK, print_json, settings_from
from receiver.cli.deliveries import tracebacks
from receiver.cli.output import (
    Table,
    age,
    bar,
    clean,
    colour_enabled,
    paint,
    state_colour,
    status_colour,
    when,
)
from receiver.cli.source import client_options, open_source
from receiver.config import Settings
from receiver.errors import ConfigError, did_you_mean
from receiver.failures import split_error
from receiver.models import (
    CREATE_SLOT,
    CREATE_UNCERTAIN,
    CREATE_WAITING,
    Delivery,
    Event,
    Job,
    RawRequest,
    Status,
)
from receiver.providers import PROVIDERS

__all__ = ["check_provider", "register", "render_job"]


def register(commands: Any) -> None:
    jobs = commands.add_parser("jobs", help="list jobs, newest first, with their progress")
    client_options(jobs)
    jobs.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    jobs.add_argument(
        "--provider",
        metavar="NAME",
        help=f"only this provider: {', '.join(sorted(PROVIDERS))}, or a declared generic one",
    )
    jobs.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only jobs whose metadata has this value (repeatable)",
    )
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jobs.set_defaults(run=run_jobs)

    job = commands.add_parser("job", help="one job's timeline: its events, requests and deliveries")
    client_options(job)
    job.add_argument("job_id", metavar="ID")
    job.set_defaults(run=run_job)


def run_jobs(args: argparse.Namespace) -> int:
    wanted: dict[str, str] = {}
    for item in args.metadata:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--metadata must look like KEY=VALUE, got {item!r}")
        wanted[key] = text
    if args.provider is not None:
        settings = settings_from(args)
        if not settings.url:  # through the admin API the receiver judges the name
            check_provider(args.provider, settings)

    async def work() -> int:
        async with open_source(args) as source:
            page = await source.list_jobs(
                status=args.status,
                provider=args.provider,
                limit=max(1, min(args.limit, 1000)),
                metadata=wanted or None,
            )
        if args.json:
            print_json({"items": page.items, "next": page.next})
            return EXIT_OK
        colour = colour_enabled()
        table = Table(["ID", "PROVIDER", "STATUS", "PROGRESS", "AGE"], right=["AGE"])
        for job in page.items:
            table.add(
                job.id,
                job.provider,
                paint(job.status.value, status_colour(job.status), enabled=colour),
                bar(job.progress),
                age(job.created_at),
            )
        print(table.render(colour=colour))
        if page.next:
            print(paint(f"(more: --limit above {len(page.items)})", "dim", enabled=colour))
        return EXIT_OK

    return asyncio.run(work())


def check_provider(name: str, settings: Settings) -> None:
    """ConfigError (exit 2) unless `name` is a built-in provider or a declared generic one."""
    known = sorted(PROVIDERS) + sorted(settings.generic)
    if name not in known:
        hint = did_you_mean(name, known)
        raise ConfigError(f"unknown provider {name!r}{hint}; known: {', '.join(known)}")


def run_job(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with open_source(args) as source:
            job = await source.get_job(args.job_id)
            events = await source.events(job.id)
            requests = await source.requests(job.id)
            deliveries = await source.deliveries(job_id=job.id)
        if args.json:
            print_json(
                {"job": job, "events": events, "requests": requests, "deliveries": deliveries}
            )
        else:
            print(render_job(job, events, deliveries, colour=colour_enabled(), requests=requests))
        return EXIT_OK

    return asyncio.run(work())


_CREATE_STATES = {
    CREATE_UNCERTAIN: "uncertain: no clear answer; the provider may have the task, waiting for"
    " its callbacks (never sent again)",
    CREATE_WAITING: "waiting: the provider asked us to send it again later",
    CREATE_SLOT: "waiting for a slot: the provider has its RECEIVER_<PROVIDER>_MAX_RUNNING jobs"
    " in flight; sent (nothing charged until then) when one ends",
}


def render_job(
    job: Job,
    events: list[Event],
    deliveries: list[Delivery],
    *,
    colour: bool,
    requests: list[RawRequest] | None = None,
) -> str:
    """The job's header, then its events oldest first, its deliveries, and its requests."""
    status = paint(job.status.value, status_colour(job.status), enabled=colour)
    lines = [
        paint(job.id, "bold", enabled=colour),
        f"  provider  {clean(job.provider)}   task {clean(job.task_id)}"
        + (f"   group {clean(job.provider_group)}" if job.provider_group else ""),
        f"  status {status}  progress {bar(job.progress)}  (raw {clean(job.raw_status)})",
        f"  created   {when(job.created_at)} ({age(job.created_at)} ago)",
    ]
    for label, text in (("result", job.result_url), ("preview", job.preview_url)):
        if text:
            lines.append(f"  {label:9} {clean(text)}")
    if job.error:
        error = f"{clean(job.error)} [{clean(job.error_code)}]"
        lines.append(f"  {'error':9} {paint(error, 'red', enabled=colour)}")
    if job.metadata:
        lines.append(f"  metadata  {clean(job.metadata)}")
    if job.notify_url:
        lines.append(f"  notify    {clean(job.notify_url)}")
    if job.idempotency_key:
        lines.append(f"  key       {clean(job.idempotency_key)}")
    if job.create_state and job.task_id is None and not job.status.terminal:
        lines.append(f"  create    {_CREATE_STATES.get(job.create_state, clean(job.create_state))}")
    for name, file in job.files.items():
        lines.append(
            f"  file {clean(name)} {clean(file.path)}  sha256={file.sha256}  {file.size} bytes"
        )
    lines.append("")
    events_table = Table(["WHEN", "SOURCE", "STATUS", "RAW", "PROGRESS", "DISPOSITION"])
    for event in events:
        disposition = event.disposition.value
        events_table.add(
            when(event.received_at),
            event.source,
            paint(event.status.value, status_colour(event.status), enabled=colour),
            clean(event.raw_status),
            bar(event.progress, width=10),
            disposition if disposition == "applied" else paint(disposition, "dim", enabled=colour),
        )
    lines += [paint(f"events ({len(events)})", "bold", enabled=colour)]
    lines += ["  " + line for line in events_table.render(colour=False).splitlines()]
    lines.append("")
    deliveries_table = Table(["DELIVERY", "HANDLER", "STATE", "ATTEMPTS", "LAST ERROR"])
    for delivery in deliveries:
        deliveries_table.add(
            delivery.id,
            clean(delivery.handler),
            paint(delivery.state.value, state_colour(delivery.state), enabled=colour),
            str(delivery.attempts),
            clean(split_error(delivery.last_error)[0]),
        )
    lines += [paint(f"deliveries ({len(deliveries)})", "bold", enabled=colour)]
    lines += ["  " + line for line in deliveries_table.render(colour=False).splitlines()]
    lines += [("  " + line).rstrip() for line in tracebacks(deliveries)]
    if requests is not None:
        lines += ["", *_requests_lines(requests, colour=colour)]
    return "\n".join(lines)


def _requests_lines(requests: list[RawRequest], *, colour: bool) -> list[str]:
    """The stored requests with our answer's status and latency ("-" until it is written)."""
    table = Table(["WHEN", "REQUEST", "ANSWER", "LATENCY"])
    for raw in requests:
        table.add(
            when(raw.received_at),
            clean(f"{raw.method} {raw.path}" + (f"?{raw.query}" if raw.query else "")),
            "-" if raw.answer_status is None else str(raw.answer_status),
            "-" if raw.answer_ms is None else f"{raw.answer_ms:.1f} ms",
        )
    lines = [paint(f"requests ({len(requests)})", "bold", enabled=colour)]
    return lines + ["  " + line for line in table.render(colour=False).splitlines()]
