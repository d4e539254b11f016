"""The monotonic job state machine and the dedupe key of an event.

Terminal states are final and progress never goes back. An event that repeats an
earlier one is a duplicate; one that would move the job backwards is late. Both are
stored and fire nothing. A late event may still raise the job's progress, so that the
final state does not depend on the order events arrived in. The one change a finished
job takes is a renewal: fresh result URLs for a succeeded job, from the status pull made
because the ones it had expired (any other statement could be an old link arriving late).
"""

from __future__ import annotations

import base64
import hashlib
from typing import NamedTuple

import msgspec

from receiver.models import Disposition, Event, Job, Status, Update, id_at

__all__ = [
    "RENEWAL",
    "Transition",
    "advance",
    "dedupe_digest",
    "dedupe_key",
    "event_of",
    "final_cost",
    "preview_rank",
]

# The source of a status pull made because a job's result URLs expired: the one statement
# that may give a finished job new URLs.
RENEWAL = "renewal"

_RANK = {
    Status.QUEUED: 0,
    Status.RUNNING: 1,
    Status.SUCCEEDED: 2,
    Status.FAILED: 2,
    Status.CANCELLED: 2,
}


class Transition(NamedTuple):
    """What one event does to a job: its disposition, the job after it, whether it changed."""

    disposition: Disposition
    job: Job
    changed: bool
    # The rank of the event the job's preview came from (see `preview_rank`).
    preview_rank: float = -1.0


def dedupe_key(provider: str, task_id: str | None, update: Update) -> str:
    """Provider, task, status and progress; or the provider's own delivery id when it sends
    one: as `dedupe_digest`, which is what each event stores and its job's index holds."""
    if update.delivery_id:
        return dedupe_digest(f"{provider}:id:{update.delivery_id}")
    progress = "-" if update.progress is None else f"{update.progress:.4f}"
    return dedupe_digest(f"{provider}:{task_id or '-'}:{update.status.value}:{progress}")


def dedupe_digest(key: str) -> str:
    """11 characters for a key of about 50, in every event row and its index entry.

    The base64 of the first 8 bytes of the key's SHA-256, unpadded; migration 0011 turned
    the keys stored before it into the same (PostgreSQL in SQL, SQLite through this
    function). A key only meets the other keys of its own job, so two of them colliding
    takes about 2^32 events of one job.
    """
    digest = hashlib.sha256(key.encode()).digest()[:8]
    return base64.b64encode(digest).rstrip(b"=").decode()


def _max_progress(current: float | None, incoming: float | None) -> float | None:
    if incoming is None:
        return current
    if current is None:
        return incoming
    return max(current, incoming)


def _is_forward(job: Job, update: Update) -> bool:
    if job.status.terminal:
        return False
    old_rank, new_rank = _RANK[job.status], _RANK[update.status]
    if new_rank != old_rank:
        return new_rank > old_rank
    # Same non-terminal status: only more progress is news.
    if update.progress is None:
        return False
    return job.progress is None or update.progress > job.progress


def final_cost(job: Job, status: Status) -> float | None:
    """The job's cost once it moves to `status`: its estimate if it succeeded, 0 if it
    failed or was cancelled (no provider here bills those; docs/operations.md says why).
    """
    if not status.terminal or job.estimated_cost is None:
        return job.cost
    return job.estimated_cost if status is Status.SUCCEEDED else 0.0


def preview_rank(update: Update) -> float:
    """How far along the event that carries a preview is: the furthest one's preview wins.

    Queued events rank 0..1, running 2..3 and terminal 4..5 (plus their progress), so
    the job's preview is the same whatever order its events arrived in.
    """
    return _RANK[update.status] * 2 + (update.progress or 0.0)


def _renewed(job: Job, update: Update, at: float, preview_from: float) -> Transition | None:
    """A succeeded job with the fresh URLs of a later success statement; None if it has none.

    It fires nothing: the job did not move, only where its result can be fetched.
    """
    if job.status is not Status.SUCCEEDED or update.status is not Status.SUCCEEDED:
        return None
    result_url = update.result_url or job.result_url
    preview_url = update.preview_url or job.preview_url
    if (result_url, preview_url) == (job.result_url, job.preview_url):
        return None
    renewed = msgspec.structs.replace(
        job, result_url=result_url, preview_url=preview_url, updated_at=at
    )
    rank = max(preview_from, preview_rank(update)) if update.preview_url else preview_from
    return Transition(Disposition.RENEWED, renewed, True, rank)


def advance(
    job: Job,
    update: Update,
    *,
    duplicate: bool,
    at: float,
    preview_from: float = -1.0,
    renewal: bool = False,
) -> Transition:
    """Apply `update` to `job` (which it does not modify) and say what became of it.

    `preview_from` is the rank of the event the job's current preview came from, as
    returned in the previous Transition; -1 when unknown or there is none. With
    `renewal` (a status pull made because the job's result URLs expired), the fresh
    URLs of a success statement replace those of a succeeded job.
    """
    if renewal and (renewed := _renewed(job, update, at, preview_from)) is not None:
        return renewed
    if duplicate:
        return Transition(Disposition.DUPLICATE, job, False, preview_from)
    task_id = job.task_id or update.task_id
    preview_url, rank = job.preview_url, preview_from
    if update.preview_url and preview_rank(update) > preview_from:
        preview_url, rank = update.preview_url, preview_rank(update)

    if not _is_forward(job, update):
        late_progress = job.progress
        if job.status is not Status.SUCCEEDED:
            late_progress = _max_progress(job.progress, update.progress)
        unchanged = (late_progress, task_id, preview_url) == (
            job.progress,
            job.task_id,
            job.preview_url,
        )
        if unchanged:
            return Transition(Disposition.LATE, job, False, rank)
        changed = msgspec.structs.replace(
            job, progress=late_progress, task_id=task_id, preview_url=preview_url, updated_at=at
        )
        return Transition(Disposition.LATE, changed, True, rank)

    status = update.status
    if status is Status.SUCCEEDED:
        progress: float | None = 1.0
    else:
        progress = _max_progress(job.progress, update.progress)
    failed = status in (Status.FAILED, Status.CANCELLED)
    moved = msgspec.structs.replace(
        job,
        task_id=task_id,
        status=status,
        raw_status=update.raw_status,
        progress=progress,
        # A failure has no result, whatever an earlier event claimed.
        result_url=update.result_url if failed else update.result_url or job.result_url,
        preview_url=preview_url,
        error=(update.error or job.error or f"provider reported {update.raw_status}")
        if failed
        else job.error,
        error_code=(update.error_code or job.error_code) if failed else job.error_code,
        updated_at=at,
        cost=final_cost(job, status),
    )
    return Transition(Disposition.APPLIED, moved, True, rank)


def event_of(
    job: Job,
    update: Update,
    transition: Transition,
    *,
    source: str,
    at: float,
    request_id: str | None,
) -> Event:
    """The event an update to `job` is stored as, with the disposition `advance` gave it:
    built once for both stores. Its id is minted at its own time, `at`: the retention
    walks events by id up to the cutoff's (first_id_at), an injected clock's too."""
    return Event(
        id=id_at("evt", at),
        job_id=job.id,
        provider=job.provider,
        task_id=update.task_id or job.task_id,
        status=update.status,
        raw_status=update.raw_status,
        progress=update.progress,
        result_url=update.result_url,
        preview_url=update.preview_url,
        error=update.error,
        error_code=update.error_code,
        source=source,
        disposition=transition.disposition,
        received_at=at,
        request_id=request_id,
        payload=update.payload,
    )
