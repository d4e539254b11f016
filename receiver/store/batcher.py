"""Group commit: concurrent callers' writes queued and committed together, batch by batch.

A caller's item is queued and the caller waits for its own outcome. When a flight is free
the first caller's item starts a batch at once, so an idle store adds no delay; items
that arrive while every flight is busy wait for the next batch, at most `limit` to a
batch. A batch runs in a task of its own, never in a caller's: a caller that gives up
(its request cancelled) cannot cut short the commit the others wait for.

With more than one flight, closed-loop callers (each sending again once answered) keep
a batch of one from holding up the rest: one flight means the first caller answered
comes back to a free store and commits alone while the others queue behind it, so each
round pays two commits (measured: 50 callers in alternate batches of 1 and 49, each
about as slow as the other). Items with the same `key` (one job's) never ride two
flights at once: a later one waits for the batch holding the earlier, so they commit
in the order they came.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from receiver.errors import StoreUnavailable

__all__ = ["GroupCommit", "Outcome"]

I = TypeVar("I")  # noqa: E741 - the item type, as in the generic's signature

# One item's result: (True, value) or (False, the exception its caller raises).
Outcome = tuple[bool, Any]
# A queued item, the future its caller waits on, and its key.
_Entry = tuple[I, asyncio.Future[Any], Hashable]


class GroupCommit(Generic[I]):
    """Runs `commit` on batches of queued items, up to `flights` batches at once.

    `commit` returns one Outcome per item, in order. If it raises, every item of the
    batch fails with what it raised. `key` names what an item writes (None: nothing
    another item could also write); see the module's docstring.
    """

    def __init__(
        self,
        commit: Callable[[list[I]], Awaitable[Sequence[Outcome]]],
        *,
        limit: int,
        flights: int = 1,
        key: Callable[[I], Hashable] = lambda item: None,
    ):
        if limit < 1 or flights < 1:
            raise ValueError("a group commit needs limit >= 1 and flights >= 1")
        self._commit = commit
        self.limit = limit
        self._flights = flights
        self._key = key
        self._queue: list[_Entry[I]] = []
        self._runners: set[asyncio.Task[None]] = set()
        # Runners that may still take from the queue: counted down by the runner itself
        # as it finds nothing to take, with no await in between, so an item queued at any
        # moment is always taken by a runner already running or one started for it (or,
        # held back by its key, by the runner of the flight that holds the key).
        self._active = 0
        # The keys of the items in flight, and how many of each.
        self._held: dict[Hashable, int] = {}

    async def submit(self, item: I) -> Any:
        """`item`'s outcome, once the batch holding it has committed (or failed)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, self._key(item)))
        if self._active < self._flights:
            self._active += 1
            runner = asyncio.create_task(self._run(), name="group-commit")
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await future

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for the batches in flight (and those queued behind them) to finish."""
        if self._runners:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(set(self._runners), timeout=timeout)
        for runner in list(self._runners):
            runner.cancel()

    async def _run(self) -> None:
        try:
            while taken := self._take():
                keys = [key for _, _, key in taken if key is not None]
                for key in keys:
                    self._held[key] = self._held.get(key, 0) + 1
                try:
                    await self._settle([(item, future) for item, future, _ in taken])
                finally:
                    for key in keys:
                        self._held[key] -= 1
                        if not self._held[key]:
                            del self._held[key]
        finally:
            self._active -= 1

    def _take(self) -> list[_Entry[I]]:
        """The next batch: the first `limit` queued items whose key no flight holds.

        An item left behind keeps its place; the flight that holds its key takes it
        once committed (it looks at the queue again before it counts itself out).
        """
        batch: list[_Entry[I]] = []
        left: list[_Entry[I]] = []
        for entry in self._queue:
            _, future, key = entry
            if future.done():
                continue  # its caller gave up before it was sent
            if len(batch) < self.limit and key not in self._held:
                batch.append(entry)
            else:
                left.append(entry)
        self._queue = left
        return batch

    async def _settle(self, batch: list[tuple[I, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._commit([item for item, _ in batch])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else StoreUnavailable("store is closing")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue  # its caller gave up; its rows are committed all the same
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
