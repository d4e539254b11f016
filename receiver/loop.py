"""The shape shared by the dispatcher and the poller: do what is due, then sleep until more is.

A loop sleeps until a `wake()` (something was just committed), the next due time the
store reports, or `idle_wait` at most, which also covers work committed by another
process. A store that fails, or a bug, makes it back off, never end.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from receiver.errors import StoreUnavailable
from receiver.models import now

__all__ = ["WorkLoop"]

log = logging.getLogger("receiver.loop")


class WorkLoop(abc.ABC):
    """Runs `run_once` whenever work is due, until stopped."""

    def __init__(self, *, idle_wait: float = 1.0):
        self.idle_wait = idle_wait
        self._wakeup = asyncio.Event()
        self._stopping = False

    @abc.abstractmethod
    async def run_once(self) -> int:
        """Start or do what is due now; return how many items were taken."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """When the next item can be taken, or None if nothing is scheduled."""

    async def before_start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Anything to do once before the first round."""

    def wake(self) -> None:
        self._wakeup.set()

    def halt(self) -> None:
        """Take no new work from now on (safe to call from a signal handler's callback)."""
        self._stopping = True
        self.wake()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop after the current round."""
        self.halt()

    async def run(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.before_start()
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                taken = await self.run_once()
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                log.warning("%s: store unavailable: %s", type(self).__name__, exc)
                await self._pause(min(30.0, 0.5 * 2**failures))
                continue
            except Exception:
                # A bug must not end the loop for good: log it, back off, go on.
                failures += 1
                log.exception("%s: unexpected error; retrying", type(self).__name__)
                await self._pause(min(30.0, 0.5 * 2**failures))
                continue
            if not taken:
                await self._sleep()

    async def _sleep(self) -> None:
        wait = self.idle_wait
        with contextlib.suppress(StoreUnavailable):
            due = await self.next_due()
            if due is not None:
                wait = max(0.0, min(wait, due - now()))
        await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if woken: a commit after a store fault ends the backoff."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
