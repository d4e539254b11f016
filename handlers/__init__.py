"""Your handlers live here (or in any module named by RECEIVER_HANDLERS).

Each `@on(...)` function runs once per matching event, at least once, with retries.
`event.id` and the delivery id are stable across retries: use them as idempotency keys.
"""

from __future__ import annotations

import logging

from receiver import Event, Job, on

log = logging.getLogger("handlers")


@on("*")
async def log_event(event: Event, job: Job) -> None:
    """Log every job change on one line; a harmless example to replace with your own."""
    progress = "-" if event.progress is None else f"{event.progress:.0%}"
    log.info(
        "job %s (%s %s): %s %s %s",
        job.id,
        job.provider,
        job.task_id,
        event.status.value,
        progress,
        event.result_url or event.error or "",
    )
