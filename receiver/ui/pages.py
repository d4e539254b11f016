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
from receiver.models import Delivery, DeliveryState, Event, Job, RawRequest
from receiver.verify import redact_value

__all__ = ["job_page", "jobs_page", "login_page", "page", "safe_url"]

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


def page(title: str, body: str, *, name: str, csrf: str | None = None, job_id: str = "") -> str:
    nav = ""
    if csrf is not None:
        nav = (
            '<form method="post" action="/ui/logout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">Log out</button></form>'
        )
    return _TEMPLATE.substitute(title=e(title), page=e(name), job_id=e(job_id), nav=nav, body=body)


def login_page(*, failed: bool, next_page: str = "/ui") -> str:
    message = '<p class="error" role="alert">That token is not right.</p>' if failed else ""
    body = (
        '<form class="login" method="post" action="/ui/login">'
        "<h1>receiver</h1>"
        f"{message}"
        f'<input type="hidden" name="next" value="{e(next_page)}">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '<button type="submit">Log in</button>'
        "</form>"
    )
    return page("Log in", body, name="login")


def _progress(progress: float | None) -> str:
    value = "" if progress is None else f' value="{progress:.4f}"'
    label = "-" if progress is None else f"{round(progress * 100)}%"
    return f'<progress max="1"{value}></progress> <span class="pct">{label}</span>'


def _status(status: str) -> str:
    return f'<span class="status status-{e(status)}">{e(status)}</span>'


def jobs_page(jobs: list[Job], *, csrf: str) -> str:
    rows = []
    for job in jobs:
        rows.append(
            f'<tr data-job-id="{e(job.id)}">'
            f'<td><a class="mono" href="/ui/jobs/{e(job.id)}">{e(job.id)}</a></td>'
            f"<td>{e(job.provider)}</td>"
            f'<td data-field="status" class="status status-{e(job.status.value)}">'
            f"{e(job.status.value)}</td>"
            f'<td data-field="progress">{_progress(job.progress)}</td>'
            f'<td class="mono">{e(job.task_id)}</td>'
            "</tr>"
        )
    body = (
        "<h1>Jobs</h1>"
        '<table id="jobs"><thead><tr><th>Job</th><th>Provider</th><th>Status</th>'
        "<th>Progress</th><th>Task</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return page("Jobs", body, name="jobs", csrf=csrf)


def _pretty(data: Any) -> str:
    """Indented JSON with anything named like a credential redacted, escaped."""
    return e(msgspec.json.format(msgspec.json.encode(redact_value(data))).decode())


def _body(raw: RawRequest) -> str:
    try:
        decoded = msgspec.json.decode(raw.body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return e(raw.body[:4096].decode("utf-8", "replace"))
    return _pretty(decoded)


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
        ("Progress", f'<span data-field="progress">{_progress(job.progress)}</span>'),
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
            f"<td>{_progress(event.progress)}</td>"
            f'<td class="disposition-{e(disposition)}">{e(disposition)}</td>'
            f"<td>{payload if event.payload is not None else '-'}</td></tr>"
        )
    request_rows = []
    for raw in requests:
        request_rows.append(
            f"<tr><td>{e(when(raw.received_at))}</td>"
            f'<td class="mono">{e(raw.method)} {e(raw.path)}'
            f"{'?' + e(raw.query) if raw.query else ''}</td>"
            f"<td>{e(raw.client)}</td>"
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
            '<button type="submit">Replay</button></form></td></tr>'
        )
    body = (
        f'<h1 class="mono">{e(job.id)}</h1>'
        f'<dl class="facts" data-job-id="{e(job.id)}">{dl}</dl>'
        f"{_media(job)}"
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
        "<th>Redacted</th></tr></thead>"
        f"<tbody>{''.join(request_rows)}</tbody></table>"
    )
    return page(job.id, body, name="job", csrf=csrf, job_id=job.id)


def _last_error(text: str | None) -> str:
    """The error's first line (kept live by app.js), its traceback folded beneath it."""
    first, trace = split_error(text)
    folded = (
        f"<details><summary>traceback</summary><pre>{e(trace)}</pre></details>" if trace else ""
    )
    return f'<td class="error"><span data-field="last_error">{e(first)}</span>{folded}</td>'
