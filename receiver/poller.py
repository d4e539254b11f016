"""Pulls job status from providers: pull-only providers, GET nudges, and scheduled polls.

A job is due when its `next_poll_at` has passed. The poller leases it, asks the
provider's status API (always at the configured base URL), and records the answer
through the same path as a callback. Polls back off as a job ages.
"""

from __future__ import annotations

import asyncio
import logging

from receiver.errors import ReceiverError, StoreUnavailable
from receiver.ingest import Ingest
from receiver.loop import WorkLoop
from receiver.models import Job, now
from receiver.providers import ProviderGateway
from receiver.store.base import Store

__all__ = ["Poller", "poll_delay"]

log = logging.getLogger("receiver.poller")


def poll_delay(job: Job, *, interval: float, cap: float, at: float) -> float:
    """Seconds to the next poll: `interval` for a new job, growing with its age up to `cap`."""
    age = max(0.0, at - job.created_at)
    return min(cap, interval * (1 + age / 300.0))


class Poller(WorkLoop):
    """Runs due polls until stopped; `wake()` after scheduling one starts it at once."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        gateways: dict[str, ProviderGateway],
        *,
        interval: float = 10.0,
        max_interval: float = 300.0,
        concurrency: int = 8,
        idle_wait: float = 1.0,
    ):
        super().__init__(idle_wait=idle_wait)
        self.store = store
        self.ingest = ingest
        self.gateways = gateways
        self.interval = interval
        self.max_interval = max_interval
        self.concurrency = concurrency

    def delay(self, job: Job) -> float:
        return poll_delay(job, interval=self.interval, cap=self.max_interval, at=now())

    async def next_due(self) -> float | None:
        return await self.store.next_poll_at()

    async def run_once(self) -> int:
        """Poll every job that is due now (up to `concurrency`); return how many."""
        jobs = await self.store.claim_polls(limit=self.concurrency, lease=120.0, at=now())
        if jobs:
            await asyncio.gather(*(self.poll(job) for job in jobs))
        return len(jobs)

    async def poll(self, job: Job) -> None:
        """Ask the provider about `job` and record the answer, or schedule another try."""
        gateway = self.gateways.get(job.provider)
        if gateway is None or job.task_id is None or not gateway.adapter.can_pull:
            await self.store.schedule_poll(job.id, None, attempted=False)
            return
        try:
            update = await gateway.pull(job.task_id)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if isinstance(exc, ReceiverError):
                log.warning("poll of %s at %s failed: %s", job.id, job.provider, exc)
            else:  # a bug: one job's poll must not stop the others
                log.exception("poll of %s at %s failed unexpectedly", job.id, job.provider)
            await self.store.schedule_poll(job.id, now() + self.delay(job), attempted=True)
            return
        await self.ingest.record(
            job.id, update, source="poll", next_poll_at=now() + self.delay(job)
        )
