"""What we answered each stored request, written after the answer: the request inspector's
status and latency.

A callback is answered as soon as its own write commits (contract 1); a second write
before the answer would cost every callback a transaction. So the answer is only noted
here, in memory, once it is sent, and a background task writes the notes in one batch per
`FLUSH_INTERVAL` (and at shutdown). The buffer holds at most `MAX_PENDING` notes; past
that the oldest are dropped (counted in `dropped`): a note is diagnosis, never worth
memory an attacker could grow. A note that is lost (dropped, or the process killed
before its flush) leaves the request's answer unknown, shown as "-".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from receiver.errors import StoreUnavailable
from receiver.store.base import AnswerNote, Store

__all__ = ["FLUSH_INTERVAL", "MAX_PENDING", "AnswerLog"]

log = logging.getLogger("receiver.answers")

FLUSH_INTERVAL = 1.0  # seconds between batched writes
# About 180 bytes a note (tracemalloc): 10,000 are under 2 MB and hold 1.7 s of callbacks
# at the fastest rate one process was measured at (5,984/s, docs/performance.md), so a
# flush every second drops none unless the store keeps refusing its batches.
MAX_PENDING = 10_000


class AnswerLog:
    """Notes of our answers (`note`), written to the store in batches once `start`ed."""

    def __init__(
        self, store: Store, *, interval: float = FLUSH_INTERVAL, max_pending: int = MAX_PENDING
    ) -> None:
        self.store = store
        self.interval = interval
        self.pending: collections.deque[AnswerNote] = collections.deque(maxlen=max_pending)
        self.dropped = 0  # notes pushed out by newer ones while the buffer was full
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note(self, request_id: str | None, status: int, latency_ms: float) -> None:
        """Remember our answer to a request; no I/O, safe to call on the hot path.

        A refusal (4xx) is not noted: it is never stored in `requests` (the quarantine
        keeps it with its status), and a flood of them must not push real notes out.
        """
        if request_id is None or 400 <= status < 500:
            return
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
        self.pending.append(AnswerNote(request_id, status, round(latency_ms, 3)))

    async def flush(self) -> int:
        """Write what is noted, in one batch; how many notes were written.

        When the store is unavailable the batch goes back in front of newer notes (still
        within the cap) for the next flush.
        """
        if not self.pending:
            return 0
        batch = list(self.pending)
        self.pending.clear()
        try:
            await self.store.save_answers(batch)
        except StoreUnavailable as exc:
            log.warning("answers not written yet (%d kept for the next try): %s", len(batch), exc)
            kept = collections.deque(batch, maxlen=self.pending.maxlen)
            kept.extend(self.pending)  # newer notes last; the oldest go first if it is full
            self.dropped += len(batch) + len(self.pending) - len(kept)
            self.pending = kept
            return 0
        return len(batch)

    def start(self) -> None:
        """Begin flushing every `interval`, in a task of the running loop."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="answers")

    async def stop(self) -> None:
        """Write the last notes and end the task (before the store closes).

        The task is asked to stop, not cancelled, so a batch being written is not cut off.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            try:
                await self.flush()  # on each tick, and once more when asked to stop
            except Exception as exc:  # a bug here must not end the loop: notes are diagnosis
                log.error("writing answers failed: %s: %s", type(exc).__name__, exc)
            if self._stopping.is_set():
                return
