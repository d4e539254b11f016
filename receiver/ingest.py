"""Recording updates: one store transaction, then start or wake whoever has new work.

Every path that learns something about a job (a callback, a poll, a create answer)
goes through `Ingest.record`, so the state machine, dedupe and handler routing are
applied the same way whatever the source.
"""

from __future__ import annotations

from collections.abc import Callable

from receiver.dispatch import Dispatcher, Registry
from receiver.models import DeliveryState, RawRequest, Update
from receiver.store.base import Claimed, NewJob, Recorded, Store, TokenMatch

__all__ = ["Ingest"]


class Ingest:
    """Commits updates with their deliveries and starts or wakes whoever runs them.

    With a `runner` (the dispatcher of this process), deliveries it has room for are
    committed already claimed and started here, without a claim round trip; the rest
    are left pending, and the dispatcher is woken for them.
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
        reserved = self._reserve()
        try:
            recorded = await self.store.record(
                job_id,
                update,
                source=source,
                route=self.handlers.route,
                raw=raw,
                new_job=new_job,
                next_poll_at=next_poll_at,
                claim=reserved,
                lease=self._lease,
            )
        except BaseException:
            self._settle(reserved, None)
            raise
        self._settle(reserved, recorded)
        return recorded

    async def record_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        update: Update,
        *,
        source: str,
        raw: RawRequest | None = None,
        next_poll_at: float | None = None,
    ) -> Recorded | None:
        """`record` for the job of a URL token, if `accept` takes it (see Store.record_by_token)."""
        reserved = self._reserve()
        try:
            recorded = await self.store.record_by_token(
                token_hash,
                accept,
                update,
                source=source,
                route=self.handlers.route,
                raw=raw,
                next_poll_at=next_poll_at,
                claim=reserved,
                lease=self._lease,
            )
        except BaseException:
            self._settle(reserved, None)
            raise
        self._settle(reserved, recorded)
        return recorded

    @property
    def _lease(self) -> float:
        return self.runner.lease if self.runner is not None else 0.0

    def _reserve(self) -> int:
        """Free runner slots for this update's deliveries, at most one per handler."""
        if self.runner is None:
            return 0
        return self.runner.reserve(self.handlers.most_routed())

    def _settle(self, reserved: int, recorded: Recorded | None) -> None:
        """Start what was committed claimed, give back unused slots, wake for the rest."""
        if recorded is None:
            if self.runner is not None:
                self.runner.unreserve(reserved)
            return
        claimed = [d for d in recorded.deliveries if d.state is DeliveryState.RUNNING]
        if self.runner is not None:
            self.runner.unreserve(reserved - len(claimed))
            self.runner.start(
                [Claimed(delivery=d, event=recorded.event, job=recorded.job) for d in claimed]
            )
        if len(recorded.deliveries) > len(claimed):
            self.wake()
