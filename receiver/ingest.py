"""Recording updates: one store transaction, then start or wake whoever has new work.

Every path that learns something about a job (a callback, a poll, a create answer)
goes through `Ingest.record`, so the state machine, dedupe and handler routing are
applied the same way whatever the source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from receiver.dispatch import Dispatcher, Registry
from receiver.models import DeliveryState, Disposition, Job
from receiver.store.base import Claim, Claimed, Recorded, Store, TokenMatch, Write

__all__ = ["Ingest"]

R = TypeVar("R", Recorded, Recorded | None)


class Ingest:
    """Commits updates with their deliveries and starts or wakes whoever runs them.

    With a `runner` (the dispatcher of this process), deliveries it has room for are
    committed already claimed and started here, without a claim round trip; the rest
    are left pending, and the dispatcher is woken for them. `on_end` hears of every job
    that an update here ended (receiver.slots frees its provider's slot).
    """

    def __init__(
        self,
        store: Store,
        handlers: Registry,
        wake: Callable[[], None] = lambda: None,
        *,
        runner: Dispatcher | None = None,
    ):
        self.store = store
        self.handlers = handlers
        self.wake = wake
        self.runner = runner
        self.on_end: Callable[[Job], None] | None = None

    async def record(self, write: Write) -> Recorded:
        """Commit `write` (see Store.record), then start or wake whoever runs its deliveries."""

        def commit(claim: Claim | None) -> Awaitable[Recorded]:
            return self.store.record(write, route=self.handlers.route, claim=claim)

        return await self._committed(commit)

    async def record_by_token(
        self, token_hash: str, accept: Callable[[TokenMatch], bool], write: Write
    ) -> Recorded | None:
        """`record` for the job of a URL token, if `accept` takes it (see Store.record_by_token)."""

        def commit(claim: Claim | None) -> Awaitable[Recorded | None]:
            return self.store.record_by_token(
                token_hash, accept, write, route=self.handlers.route, claim=claim
            )

        return await self._committed(commit)

    async def _committed(self, commit: Callable[[Claim | None], Awaitable[R]]) -> R:
        """Run `commit` with the runner's free slots for this update's deliveries (at most one
        per handler); then start what it committed claimed, give back unused slots, and wake
        the runner for the rest."""
        runner = self.runner
        reserved = runner.reserve(self.handlers.most_routed()) if runner is not None else 0
        claim = None
        if runner is not None and reserved:
            # The stamp lets other processes take a dead one's deliveries over; a store no
            # other process shares gives them back at the next start (release_running),
            # and on SQLite the stamp, dropped again at the finish, left its bytes as free
            # space in the rows' pages.
            worker = runner.worker if self.store.shared else None
            claim = Claim(most=reserved, lease=runner.lease, worker=worker)
        try:
            recorded = await commit(claim)
        except BaseException:
            if runner is not None:
                runner.unreserve(reserved)
            raise
        if recorded is None:
            if runner is not None:
                runner.unreserve(reserved)
            return recorded
        claimed = [d for d in recorded.deliveries if d.state is DeliveryState.RUNNING]
        if runner is not None:
            runner.unreserve(reserved - len(claimed))
            runner.start(
                [Claimed(delivery=d, event=recorded.event, job=recorded.job) for d in claimed]
            )
        if len(recorded.deliveries) > len(claimed):
            self.wake()
        ended = recorded.event.disposition is Disposition.APPLIED and recorded.job.status.terminal
        if ended and self.on_end is not None:
            self.on_end(recorded.job)
        return recorded
