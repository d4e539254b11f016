"""Group commit: concurrent callers' writes queued and committed together, batch by batch.

A caller's item is queued and the caller waits for its own outcome. When no batch is in
flight the first caller's item starts one at once, so an idle store adds no delay;
items that arrive while batches are in flight wait for the next one, at most `limit` to
a batch. A batch runs in a task of its own, never in a caller's: a caller that gives up
(its request cancelled) cannot cut short the commit the others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from receiver.errors import StoreUnavailable

__all__ = ["GroupCommit", "Outcome"]

I = TypeVar("I")  # noqa: E741 - the item type, as in the generic's signature

# One item's result: (True, value) or (False, the exception its caller raises).
Outcome = tuple[bool, Any]


class GroupCommit(Generic[I]):
    """Runs `commit` on batches of queued items, up to `flights` batches at once.

    `commit` returns one Outcome per item, in order. If it raises, every item of the
    batch fails with what it raised.
    """

    def __init__(
        self,
        commit: Callable[[list[I]], Awaitable[Sequence[Outcome]]],
        *,
        limit: int,
        flights: int = 1,
    ):
        if limit < 1 or flights < 1:
            raise ValueError("a group commit needs limit >= 1 and flights >= 1")
        self._commit = commit
        self.limit = limit
        self._flights = flights
        self._queue: list[tuple[I, asyncio.Future[Any]]] = []
        self._runners: set[asyncio.Task[None]] = set()
        # Runners that may still take from the queue: counted down by the runner itself
        # as it finds the queue empty, with no await in between, so an item queued at any
        # moment is always taken by a runner already running or one started for it.
        self._active = 0

    async def submit(self, item: I) -> Any:
        """`item`'s outcome, once the batch holding it has committed (or failed)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
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
            while self._queue:
                taken, self._queue = self._queue[: self.limit], self._queue[self.limit :]
                batch = [(item, future) for item, future in taken if not future.done()]
                if batch:
                    await self._settle(batch)
        finally:
            self._active -= 1

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
