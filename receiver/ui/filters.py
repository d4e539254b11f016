"""The job list's filters, read from the query string and applied through the store.

Every filter lives in the URL (`/ui?status=failed&provider=rixapi&metadata=customer%3Dacme
&since=2h&q=...&before=...`), so a filtered view is a link an operator can keep or share,
and the form works without JavaScript. Bad values are named back to the operator, never
a 500: the page shows what was wrong and the filter is left out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import msgspec

from receiver.models import Job, Status
from receiver.store import Store
from receiver.store.base import JobPage, metadata_filter

__all__ = ["PAGE_SIZE", "JobQuery", "find_jobs", "parse_job_query"]

PAGE_SIZE = 50
_MAX_LIMIT = 500
_MAX_TEXT = 200  # longer search or filter text is not an id, a task id or a metadata value
_DURATION = re.compile(r"^(\d{1,6})\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class JobQuery(msgspec.Struct, kw_only=True):
    """The list's filters as given (for the form) and as understood (for the store)."""

    status: Status | None = None
    provider: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    since_text: str = ""
    since: float | None = None
    q: str = ""
    before: str | None = None
    limit: int = PAGE_SIZE
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def filtered(self) -> bool:
        """Whether anything narrows the list (the live stream only serves the plain one)."""
        return bool(self.status or self.provider or self.metadata or self.since_text or self.q)

    def pairs(self, *, before: str | None = None) -> list[tuple[str, str]]:
        """The query string's pairs for these filters, on the page after `before`."""
        pairs: list[tuple[str, str]] = []
        if self.status:
            pairs.append(("status", self.status.value))
        if self.provider:
            pairs.append(("provider", self.provider))
        pairs += [("metadata", f"{key}={value}") for key, value in self.metadata.items()]
        if self.since_text:
            pairs.append(("since", self.since_text))
        if self.q:
            pairs.append(("q", self.q))
        if self.limit != PAGE_SIZE:
            pairs.append(("limit", str(self.limit)))
        if before:
            pairs.append(("before", before))
        return pairs

    def url(self, *, before: str | None = None) -> str:
        query = urlencode(self.pairs(before=before))
        return f"/ui?{query}" if query else "/ui"


def _text(values: Sequence[str]) -> str:
    return values[-1].strip()[:_MAX_TEXT] if values else ""


def parse_since(text: str, *, at: float) -> float:
    """`2h`, `30m`, `7d` back from `at`, or an ISO date or time (the server's local zone
    unless it names one); ValueError otherwise."""
    if match := _DURATION.fullmatch(text.lower()):
        return at - int(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"since {text[:40]!r} must be a duration like 2h or 7d,"
            " or a date like 2026-12-07 or 2026-12-07T09:30"
        ) from None


def parse_job_query(query: Mapping[str, Sequence[str]], *, at: float | None = None) -> JobQuery:
    """The filters in `query` (each name to all its values); problems listed, not raised."""
    found = JobQuery()
    status = _text(query.get("status", ()))
    if status:
        try:
            found.status = Status(status)
        except ValueError:
            found.problems.append(f"status {status[:40]!r} is not one of {', '.join(Status)}")
    found.provider = _text(query.get("provider", ())) or None
    for pair in query.get("metadata", ()):
        if not pair.strip():
            continue  # the form's empty field
        key, equals, value = pair.strip()[:_MAX_TEXT].partition("=")
        try:
            if not equals:
                raise ValueError(f"metadata {pair[:40]!r} must be key=value")
            metadata_filter({key.strip(): value.strip()})
        except ValueError as exc:
            found.problems.append(str(exc))
            continue
        found.metadata[key.strip()] = value.strip()
    found.since_text = _text(query.get("since", ()))
    if found.since_text:
        try:
            found.since = parse_since(found.since_text, at=time.time() if at is None else at)
        except ValueError as exc:
            found.problems.append(str(exc))
            found.since_text = ""
    found.q = _text(query.get("q", ()))
    found.before = _text(query.get("before", ())) or None
    limit = _text(query.get("limit", ()))
    if limit:
        if limit.isdigit() and 1 <= int(limit) <= _MAX_LIMIT:
            found.limit = int(limit)
        else:
            found.problems.append(f"limit must be a whole number from 1 to {_MAX_LIMIT}")
    return found


def _matches(job: Job, query: JobQuery, wanted: Mapping[str, Sequence[str]]) -> bool:
    """Whether a job found by its id passes the other filters too."""
    if query.status and job.status is not query.status:
        return False
    if query.provider and job.provider != query.provider:
        return False
    for key, candidates in wanted.items():
        if key not in job.metadata:
            return False
        if msgspec.json.encode(job.metadata[key]).decode() not in candidates:
            return False
    return True


async def find_jobs(store: Store, query: JobQuery) -> JobPage:
    """One page of jobs, newest first: the search text is a job id or a task id.

    `since` cuts the page at the first older job: ids sort by creation, so every job
    on later pages is older still and there is no next page.
    """
    wanted = metadata_filter(query.metadata)
    hits: list[Job] = []
    if query.q and query.before is None:
        job = await store.get_job(query.q)
        if job is not None and _matches(job, query, wanted):
            hits.append(job)
    filters: dict[str, Any] = {
        "status": query.status.value if query.status else None,
        "provider": query.provider,
        "task_id": query.q or None,
        "metadata": wanted or None,
    }
    page = await store.list_jobs(**filters, limit=query.limit, before=query.before)
    seen = {job.id for job in hits}
    items = hits + [job for job in page.items if job.id not in seen]
    if query.since is None:
        return JobPage(items=items, next=page.next)
    kept = [job for job in items if job.created_at >= query.since]
    if len(kept) < len(items) or page.next is None:
        return JobPage(items=kept, next=None)
    # A full page: a next one only if its first job is new enough (no empty last page).
    peek = await store.list_jobs(**filters, limit=1, before=page.next)
    more = bool(peek.items) and peek.items[0].created_at >= query.since
    return JobPage(items=kept, next=page.next if more else None)
