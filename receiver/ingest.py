"""Recording updates: one store transaction, then wake whoever has new work.

Every path that learns something about a job (a callback, a poll, a create answer)
goes through `Ingest.record`, so the state machine, dedupe and handler routing are
applied the same way whatever the source.
"""

from __future__ import annotations

from collections.abc import Callable

from receiver.dispatch import Registry
from receiver.models import RawRequest, Update
from receiver.store.base import NewJob, Recorded, Store

__all__ = ["Ingest"]


class Ingest:
    """Commits updates with their deliveries and wakes the dispatcher when there are any."""

    def __init__(self, store: Store, handlers: Registry, wake: Callable[[], None] = lambda: None):
        self.store = store
        self.handlers = handlers
        self.wake = wake

    async def record(
        self,
        job_id: str | None,
        update: Update,
        *,
        source: str,
        raw: RawRequest | None = None,
        new_job: NewJob | None = None,
        next_poll_at: float | None = None,
    ) -> Recorded:
        recorded = await self.store.record(
            job_id,
            update,
            source=source,
            route=self.handlers.route,
            raw=raw,
            new_job=new_job,
            next_poll_at=next_poll_at,
        )
        if recorded.deliveries:
            self.wake()
        return recorded
