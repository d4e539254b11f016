"""The monotonic job state machine and the dedupe key of an event.

Terminal states are final and progress never goes back. An event that repeats an
earlier one is a duplicate; one that would move the job backwards is late. Both are
stored and fire nothing. A late event may still raise the job's progress, so that the
final state does not depend on the order events arrived in.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from receiver.models import Disposition, Job, Status, Update

__all__ = ["Transition", "advance", "dedupe_key"]

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


def dedupe_key(provider: str, task_id: str | None, update: Update) -> str:
    """Provider, task, status and progress; or the provider's own delivery id when it sends one."""
    if update.delivery_id:
        return f"{provider}:id:{update.delivery_id}"
    progress = "-" if update.progress is None else f"{update.progress:.4f}"
    return f"{provider}:{task_id or '-'}:{update.status.value}:{progress}"


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


def advance(job: Job, update: Update, *, duplicate: bool, at: float) -> Transition:
    """Apply `update` to `job` (which it does not modify) and say what became of it."""
    if duplicate:
        return Transition(Disposition.DUPLICATE, job, False)
    task_id = job.task_id or update.task_id
    if not _is_forward(job, update):
        late_progress = job.progress
        if job.status is not Status.SUCCEEDED:
            late_progress = _max_progress(job.progress, update.progress)
        if late_progress == job.progress and task_id == job.task_id:
            return Transition(Disposition.LATE, job, False)
        changed = msgspec.structs.replace(
            job, progress=late_progress, task_id=task_id, updated_at=at
        )
        return Transition(Disposition.LATE, changed, True)

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
        result_url=update.result_url or job.result_url,
        preview_url=update.preview_url or job.preview_url,
        error=(update.error or job.error or f"provider reported {update.raw_status}")
        if failed
        else job.error,
        error_code=update.error_code or job.error_code if failed else job.error_code,
        updated_at=at,
    )
    return Transition(Disposition.APPLIED, moved, True)
