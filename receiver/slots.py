"""In-flight caps: RECEIVER_<PROVIDER>_MAX_RUNNING jobs at a provider at most.

A submission past a provider's cap is kept (`create_state` 'slot', its fields stored)
and sent when a slot frees, oldest first. The store admits waiting jobs in one step
serialised per provider (PostgreSQL: an advisory lock held with the count; SQLite: its
single writer), so the cap holds across every process. This loop asks it to: at once
when a job of this process ends, and every `sweep` seconds for slots freed elsewhere
(or jobs left waiting across a restart). Nothing here polls harder than that.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

from receiver.loop import WorkLoop
from receiver.models import Job, now

__all__ = ["Slots"]

log = logging.getLogger("receiver.slots")


class Slots(WorkLoop):
    """Admits creates waiting for a slot; `job_ended` wakes it for that job's provider."""

    def __init__(
        self,
        admit: Callable[[str], Awaitable[object]],
        providers: Collection[str],
        *,
        sweep: float,
    ):
        super().__init__(idle_wait=sweep)
        self.admit = admit  # Submitter.admit: admits and sends, oldest first
        self.providers = frozenset(providers)
        self._ended: set[str] = set()
        self._next_sweep = 0.0  # the first round looks at every capped provider

    def job_ended(self, job: Job) -> None:
        """A job ended in this process: its provider may have a free slot now."""
        self.wake_for(job.provider)

    def wake_for(self, provider: str) -> None:
        """Look at `provider`'s waiting jobs at once."""
        if provider in self.providers:
            self._ended.add(provider)
            self.wake()

    async def run_once(self) -> int:
        at = now()
        due, self._ended = self._ended, set()
        if at >= self._next_sweep:
            due |= self.providers
            self._next_sweep = at + self.idle_wait
        for provider in sorted(due):
            await self.admit(provider)
        return 0  # never busy: sleep until woken or the next sweep

    async def next_due(self) -> float | None:
        return self._next_sweep
