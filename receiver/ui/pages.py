"""HTML for the dashboard's pages. Every value is escaped: provider data is hostile.

URLs from providers are only made into links, videos and images when they are http(s),
so a `javascript:` result URL is shown as text and never followed.
"""

from __future__ import annotations

import html
import string
import time
from importlib import resources
from typing import Any

import msgspec

from receiver.failures import split_error
from receiver.models import Delivery, DeliveryState, Event, Job, Quarantined, RawRequest, Status
from receiver.store.base import JobPage
from receiver.ui.filters import JobQuery
from receiver.verify import redact_value

__all__ = [
    "age",
    "dead_page",
    "error_line",
    "job_page",
    "jobs_page",
    "login_page",
    "metadata_text",
    "not_found_page",
    "page",
    "quarantine_page",
    "safe_url",
]

_TEMPLATE = string.Template(
    resources.files("receiver.ui").joinpath("templates/page.html").read_text("utf-8")
)


def e(value: Any) -> str:
    """Escaped text; None as "-"."""
    return "-" if value is None else html.escape(str(value), quote=True)


def safe_url(url: str | None) -> str | None:
    """`url` when it is an absolute http(s) URL, else None."""
    if url and url.lower().startswith(("https://", "http://")):
        return url
    return None


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


_NAV = (
    '<nav><a href="/ui">Jobs</a> <a href="/ui/dead">Dead deliveries</a>'
    ' <a href="/ui/quarantine">Quarantine</a></nav>'
)


def page(
    title: str,
    body: str,
    *,
    name: str,
    csrf: str | None = None,
    job_id: str = "",
    live: bool = True,
) -> str:
    """The layout around `body`; `live` False keeps app.js from streaming (filtered lists)."""
    nav = ""
    if csrf is not None:
        nav = (
            f"{_NAV}"
            '<form method="post" action="/ui/logout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">Log out</button></form>'
        )
    return _TEMPLATE.substitute(
        title=e(title),
        page=e(name),
        job_id=e(job_id),
        stream="on" if live else "off",
        nav=nav,
        body=body,
    )


def flash(message: str | None) -> str:
    return f'<p class="flash" role="status">{e(message)}</p>' if message else ""


def login_page(*, failed: bool, next_page: str = "/ui", token_hint: str = "") -> str:
    """The login form; `token_hint` says where the token is (never the token itself)."""
    message = '<p class="error" role="alert">That token is not right.</p>' if failed else ""
    hint = f'<p class="muted hint">{e(token_hint)}</p>' if token_hint else ""
    body = (
        '<form class="login" method="post" action="/ui/login">'
        "<h1>receiver</h1>"
        f"{message}"
        f'<input type="hidden" name="next" value="{e(next_page)}">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        f"{hint}"
        '<button type="submit">Log in</button>'
        "</form>"
    )
    return page("Log in", body, name="login")


def not_found_page(what: str, *, csrf: str | None) -> str:
    body = f'<h1>Not found</h1><p class="error">{e(what)}</p><p><a href="/ui">All jobs</a></p>'
    return page("Not found", body, name="missing", csrf=csrf, live=False)


def _progress(progress: float | None, status: Status) -> str:
    """A bar with the value, or an indeterminate (moving) one only while the job runs."""
    label = "-" if progress is None else f"{round(progress * 100)}%"
    if progress is None and status is not Status.RUNNING:
        return f'<span class="pct">{label}</span>'
    value = "" if progress is None else f' value="{progress:.4f}"'
    return f'<progress max="1"{value}></progress> <span class="pct">{label}</span>'


def age(created_at: float, at: float) -> str:
    """How long ago, in at most two units: `45s`, `12m`, `3h 4m`, `5d 2h`."""
    seconds = max(0, int(at - created_at))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes}m"
    if days < 1:
        return f"{hours}h {minutes % 60}m"
    return f"{days}d {hours % 24}h"


def error_line(job: Job, *, chars: int = 120) -> str:
    """The job's error's first line, cut to `chars`, with its code; "" when none."""
    if not job.error and not job.error_code:
        return ""
    first = (job.error or "").strip().splitlines()[0] if job.error and job.error.strip() else ""
    if len(first) > chars:
        first = first[: chars - 1] + "…"
    return f"{first} [{job.error_code}]" if job.error_code else first


def metadata_text(metadata: dict[str, Any], *, chars: int = 160) -> str:
    """`key=value, ...` on one line (strings bare, other values as JSON), cut to `chars`."""
    parts = []
    for key, value in metadata.items():
        shown = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _status(status: str) -> str:
    return f'<span class="status status-{e(status)}">{e(status)}</span>'


def _job_row(job: Job, at: float) -> str:
    error = error_line(job)
    metadata = metadata_text(job.metadata)
    return (
        f'<tr data-job-id="{e(job.id)}">'
        f'<td><a class="mono" href="/ui/jobs/{e(job.id)}">{e(job.id)}</a></td>'
        f"<td>{e(job.provider)}</td>"
        f'<td data-field="status" class="status status-{e(job.status.value)}">'
        f"{e(job.status.value)}</td>"
        f'<td data-field="progress">{_progress(job.progress, job.status)}</td>'
        f'<td data-field="age" title="{e(when(job.created_at))}">{e(age(job.created_at, at))}</td>'
        f'<td class="mono">{e(job.task_id)}</td>'
        f'<td data-field="error" class="error">{e(error) if error else ""}</td>'
        f'<td data-field="metadata" class="mono" title="{e(metadata)}">{e(metadata) or ""}</td>'
        "</tr>"
    )


def _options(name: str, chosen: str | None, values: list[str]) -> str:
    options = ['<option value="">any</option>']
    for value in values:
        selected = " selected" if value == chosen else ""
        options.append(f'<option value="{e(value)}"{selected}>{e(value)}</option>')
    return f'<select id="f-{name}" name="{name}">{"".join(options)}</select>'


def _filter_form(query: JobQuery, providers: list[str]) -> str:
    if query.provider and query.provider not in providers:
        providers = [*providers, query.provider]
    metadata = " ".join(
        f'<input name="metadata" value="{e(f"{key}={value}")}">'
        for key, value in query.metadata.items()
    )
    limit = (
        f'<input type="hidden" name="limit" value="{query.limit}">'
        if "limit" in dict(query.pairs())
        else ""
    )
    return (
        '<form class="filters" method="get" action="/ui" role="search">'
        '<label>Search <input id="f-q" name="q" type="search" placeholder="job id or task id"'
        f' value="{e(query.q)}"></label>'
        f"<label>Status {_options('status', query.status, [s.value for s in Status])}</label>"
        f"<label>Provider {_options('provider', query.provider, sorted(providers))}</label>"
        f'<label>Metadata <span class="row">{metadata}'
        '<input id="f-metadata" name="metadata" placeholder="key=value"></span></label>'
        '<label>Since <input id="f-since" name="since" placeholder="2h, 7d or 2026-12-07"'
        f' value="{e(query.since_text)}"></label>'
        f"{limit}"
        '<button type="submit">Filter</button> <a href="/ui">Clear</a>'
        "</form>"
    )


def jobs_page(
    found: JobPage, query: JobQuery, *, providers: list[str], csrf: str, at: float
) -> str:
    """The job list: the filter form, one page of jobs and links to the next.

    Only the unfiltered first page is live: new jobs appear at its top as they come.
    """
    live = not query.filtered and query.before is None
    problems = "".join(f'<p class="error" role="alert">{e(text)}</p>' for text in query.problems)
    rows = "".join(_job_row(job, at) for job in found.items)
    count = len(found.items)
    pager = [f'<span class="muted">{count} job{"" if count == 1 else "s"} on this page</span>']
    if query.before is not None:
        pager.append(f'<a id="first-page" href="{e(query.url())}">Newest</a>')
    if found.next is not None:
        pager.append(f'<a id="next-page" href="{e(query.url(before=found.next))}">Older →</a>')
    empty = "" if found.items else '<p class="muted" id="no-jobs">No jobs match.</p>'
    body = (
        "<h1>Jobs</h1>"
        f"{_filter_form(query, providers)}{problems}"
        '<table id="jobs"><thead><tr><th>Job</th><th>Provider</th><th>Status</th>'
        "<th>Progress</th><th>Age</th><th>Task</th><th>Error</th><th>Metadata</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>{empty}"
        f'<nav class="pager">{" ".join(pager)}</nav>'
    )
    return page("Jobs", body, name="jobs", csrf=csrf, live=live)


def _pretty(data: Any) -> str:
    """Indented JSON with anything named like a credential redacted, escaped."""
    return e(msgspec.json.format(msgspec.json.encode(redact_value(data))).decode())


def _body(raw: RawRequest | Quarantined) -> str:
    try:
        decoded = msgspec.json.decode(raw.body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return e(raw.body[:4096].decode("utf-8", "replace"))
    return _pretty(decoded)


def _size(size: int) -> str:
    """Bytes in the largest unit that keeps a whole number in front: `1.5 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def _files(job: Job) -> str:
    """The local copies the download handler kept, as the CLI's `receiver job` lists them."""
    if not job.files:
        return ""
    rows = []
    for name, file in job.files.items():
        url = safe_url(file.url)
        link = f'<a href="{e(url)}" rel="noreferrer noopener">{e(url)}</a>' if url else e(file.url)
        rows.append(
            f'<tr data-file="{e(name)}"><td>{e(name)}</td>'
            f'<td title="{file.size} bytes">{e(_size(file.size))}</td>'
            f'<td class="mono">{e(file.sha256)}</td><td>{e(file.content_type)}</td>'
            f'<td class="mono">{e(file.path)}</td><td class="url">{link}</td>'
            f"<td>{e(when(file.stored_at))}</td></tr>"
        )
    return (
        f"<h2>Files ({len(job.files)})</h2>"
        '<table id="files"><thead><tr><th>Name</th><th>Size</th><th>SHA-256</th><th>Type</th>'
        "<th>Path</th><th>Fetched from</th><th>Stored</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _media(job: Job) -> str:
    parts = []
    result = safe_url(job.result_url)
    preview = safe_url(job.preview_url)
    if result:
        poster = f' poster="{e(preview)}"' if preview else ""
        parts.append(
            f'<figure><video id="result-video" src="{e(result)}" controls preload="metadata"'
            f"{poster}></video>"
            f'<figcaption><a href="{e(result)}" rel="noreferrer noopener">result</a></figcaption>'
            "</figure>"
        )
    if preview:
        parts.append(
            f'<figure><img id="preview-image" src="{e(preview)}" alt="preview">'
            "<figcaption>preview</figcaption></figure>"
        )
    return f'<div class="media">{"".join(parts)}</div>' if parts else ""


def job_page(
    job: Job,
    events: list[Event],
    requests: list[RawRequest],
    deliveries: list[Delivery],
    *,
    csrf: str,
    notice: str | None = None,
) -> str:
    facts = [
        ("Provider", e(job.provider)),
        ("Task", f'<span class="mono">{e(job.task_id)}</span>'),
        (
            "Status",
            f'<span data-field="status" class="status status-{e(job.status.value)}">'
            f'{e(job.status.value)}</span> (<span data-field="raw_status">'
            f"{e(job.raw_status)}</span>)",
        ),
        ("Progress", f'<span data-field="progress">{_progress(job.progress, job.status)}</span>'),
        ("Created", e(when(job.created_at))),
        ("Result", e(job.result_url)),
        ("Preview", e(job.preview_url)),
    ]
    if job.error:
        facts.append(("Error", f'<span class="error">{e(job.error)} [{e(job.error_code)}]</span>'))
    if job.metadata:
        facts.append(("Metadata", f"<pre>{_pretty(job.metadata)}</pre>"))
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)

    event_rows = []
    for event in events:
        disposition = event.disposition.value
        payload = (
            f"<details><summary>payload</summary><pre>{_pretty(event.payload)}</pre></details>"
        )
        event_rows.append(
            f'<tr data-event-id="{e(event.id)}">'
            f"<td>{e(when(event.received_at))}</td><td>{e(event.source)}</td>"
            f"<td>{_status(event.status.value)}</td><td>{e(event.raw_status)}</td>"
            f"<td>{_progress(event.progress, event.status)}</td>"
            f'<td class="disposition-{e(disposition)}">{e(disposition)}</td>'
            f"<td>{payload if event.payload is not None else '-'}</td></tr>"
        )
    request_rows = []
    for raw in requests:
        request_rows.append(
            f"<tr><td>{e(when(raw.received_at))}</td>"
            f'<td class="mono">{e(raw.method)} {e(raw.path)}'
            f"{'?' + e(raw.query) if raw.query else ''}</td>"
            f"<td>{e(raw.client)}</td>{_answer(raw)}"
            f"<td><details><summary>headers and body</summary>"
            f"<pre>{_pretty(raw.headers)}</pre><pre>{_body(raw)}</pre></details></td></tr>"
        )
    delivery_rows = []
    for delivery in deliveries:
        finished = delivery.state in (DeliveryState.DEAD, DeliveryState.DONE)
        action = f"/ui/deliveries/{delivery.id}/replay"
        delivery_rows.append(
            f'<tr data-delivery-id="{e(delivery.id)}">'
            f'<td class="mono">{e(delivery.id)}</td><td class="mono">{e(delivery.handler)}</td>'
            f'<td data-field="state" class="state-{e(delivery.state.value)}">'
            f"{e(delivery.state.value)}</td>"
            f'<td data-field="attempts">{delivery.attempts}</td>'
            f"{_last_error(delivery.last_error)}"
            f'<td><form class="replay" method="post" action="{e(action)}"'
            f"{'' if finished else ' hidden'}>"
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<input type="hidden" name="job" value="{e(job.id)}">'
            '<input type="hidden" name="back" value="job">'
            '<button type="submit">Replay</button></form></td></tr>'
        )
    body = (
        f'<h1 class="mono">{e(job.id)}</h1>{flash(notice)}'
        f'<dl class="facts" data-job-id="{e(job.id)}">{dl}</dl>'
        f"{_media(job)}{_files(job)}"
        f"<h2>Events ({len(events)})</h2>"
        '<table id="events"><thead><tr><th>When</th><th>Source</th><th>Status</th><th>Raw</th>'
        "<th>Progress</th><th>Disposition</th><th>Payload</th></tr></thead>"
        f"<tbody>{''.join(event_rows)}</tbody></table>"
        f"<h2>Deliveries ({len(deliveries)})</h2>"
        '<table id="deliveries"><thead><tr><th>Delivery</th><th>Handler</th><th>State</th>'
        "<th>Attempts</th><th>Last error</th><th></th></tr></thead>"
        f"<tbody>{''.join(delivery_rows)}</tbody></table>"
        f"<h2>Requests ({len(requests)})</h2>"
        '<table id="requests"><thead><tr><th>When</th><th>Request</th><th>Client</th>'
        "<th>Answer</th><th>Latency</th><th>Redacted</th></tr></thead>"
        f"<tbody>{''.join(request_rows)}</tbody></table>"
    )
    return page(job.id, body, name="job", csrf=csrf, job_id=job.id)


def _answer(raw: RawRequest) -> str:
    """Our answer's status and latency cells; "-" until written (about a second after)."""
    if raw.answer_status is None:
        return '<td data-field="answer">-</td><td data-field="latency">-</td>'
    latency = "-" if raw.answer_ms is None else f"{raw.answer_ms:.1f} ms"
    return (
        f'<td data-field="answer" class="answer-{raw.answer_status // 100}xx">'
        f"{raw.answer_status}</td>"
        f'<td data-field="latency">{latency}</td>'
    )


def _last_error(text: str | None) -> str:
    """The error's first line (kept live by app.js), its traceback folded beneath it."""
    first, trace = split_error(text)
    folded = (
        f"<details><summary>traceback</summary><pre>{e(trace)}</pre></details>" if trace else ""
    )
    return f'<td class="error"><span data-field="last_error">{e(first)}</span>{folded}</td>'


def _replay_form(action: str, label: str, csrf: str, back: str) -> str:
    return (
        f'<form class="replay" method="post" action="{e(action)}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="back" value="{e(back)}">'
        f'<button type="submit">{e(label)}</button></form>'
    )


def dead_page(deliveries: list[Delivery], *, csrf: str, notice: str | None, limit: int) -> str:
    """Dead deliveries, oldest first, each with replay, and one button to replay them all."""
    rows = []
    for delivery in deliveries:
        action = f"/ui/deliveries/{delivery.id}/replay"
        rows.append(
            f'<tr data-delivery-id="{e(delivery.id)}">'
            f'<td class="mono">{e(delivery.id)}</td>'
            f'<td><a class="mono" href="/ui/jobs/{e(delivery.job_id)}">'
            f"{e(delivery.job_id)}</a></td>"
            f'<td class="mono">{e(delivery.handler)}</td><td>{delivery.attempts}</td>'
            f"<td>{e(when(delivery.updated_at))}</td>"
            f"{_last_error(delivery.last_error)}"
            f"<td>{_replay_form(action, 'Replay', csrf, 'dead')}</td></tr>"
        )
    more = (
        f'<p class="muted">Showing the oldest {limit}; replay them to see the rest.</p>'
        if len(deliveries) >= limit
        else ""
    )
    replay_all = (
        _replay_form("/ui/dead/replay", "Replay all dead deliveries", csrf, "dead")
        if deliveries
        else '<p class="muted" id="no-dead">No dead deliveries.</p>'
    )
    body = (
        f"<h1>Dead deliveries ({len(deliveries)})</h1>{flash(notice)}"
        '<p class="muted">Deliveries whose handler failed every attempt. Replay runs them'
        " again under the same id (the handler's idempotency key).</p>"
        f"{replay_all}"
        '<table id="dead"><thead><tr><th>Delivery</th><th>Job</th><th>Handler</th>'
        "<th>Attempts</th><th>Died</th><th>Last error</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}"
    )
    return page("Dead deliveries", body, name="dead", csrf=csrf, live=False)


def quarantine_page(entries: list[Quarantined], *, csrf: str, limit: int) -> str:
    """Refused requests, newest first, with why and what was kept of them (redacted)."""
    rows = []
    for entry in entries:
        query = f"?{e(entry.query)}" if entry.query else ""
        rows.append(
            f'<tr data-quarantine-id="{e(entry.id)}">'
            f"<td>{e(when(entry.received_at))}</td><td>{e(entry.provider)}</td>"
            f'<td class="error">{e(entry.reason)}</td><td>{entry.status_code}</td>'
            f"<td>{e(entry.client)}</td>"
            f'<td class="mono">{e(entry.method)} {e(entry.path)}{query}</td>'
            "<td><details><summary>headers and body</summary>"
            f"<pre>{_pretty(entry.headers)}</pre><pre>{_body(entry)}</pre></details></td></tr>"
        )
    empty = "" if entries else '<p class="muted" id="no-quarantine">Nothing was refused.</p>'
    more = f'<p class="muted">Showing the newest {limit}.</p>' if len(entries) >= limit else ""
    body = (
        f"<h1>Quarantine ({len(entries)})</h1>"
        '<p class="muted">Requests to the hook routes that were refused, kept redacted and'
        " capped.</p>"
        '<table id="quarantine"><thead><tr><th>When</th><th>Provider</th><th>Reason</th>'
        "<th>Status</th><th>Client</th><th>Request</th><th>Redacted</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{empty}{more}"
    )
    return page("Quarantine", body, name="quarantine", csrf=csrf, live=False)
