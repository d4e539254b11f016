"""Pulls job status from providers: pull-only providers, GET nudges and overdue jobs.

A job is due when its `next_poll_at` has passed: at once for a nudge, every few
seconds for a pull-only provider, and, for a provider that calls back, when no news
has come for its deadline. The poller leases the job, asks the provider's status API
(always at the configured base URL) within that provider's limits, and records the
answer through the same path as a callback. A job still open at its give-up age is
failed with the reason. At start, open jobs with nothing scheduled get a deadline, so
jobs left open while the receiver was down are checked. `renew` asks once more about a
succeeded job whose result URLs expired, for fresh ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from receiver.errors import ProviderError, ReceiverError, StoreUnavailable
from receiver.ingest import Ingest
from receiver.logs import bind
from receiver.loop import WorkLoop
from receiver.metrics import METRICS
from receiver.models import CREATE_SLOT, CREATE_WAITING, Job, Status, Update, now
from receiver.provider_limits import ProviderLimits
from receiver.providers import ProviderGateway
from receiver.slots import Slots
from receiver.state import RENEWAL
from receiver.store.base import Store, Write

__all__ = ["Poller", "create_unresolved", "gave_up", "never_sent", "poll_delay"]

log = logging.getLogger("receiver.poller")


def poll_delay(job: Job, *, interval: float, cap: float, at: float) -> float:
    """Seconds to the next poll: `interval` for a new job, growing with its age up to `cap`."""
    age = max(0.0, at - job.created_at)
    return min(cap, interval * (1 + age / 300.0))


def gave_up(provider: str, seconds: float) -> Update:
    """The failure recorded for a job that is still open at its give-up age."""
    hours = seconds / 3600
    return Update(
        status=Status.FAILED,
        raw_status="gave_up",
        error=(
            f"no final status from {provider} after {hours:g} h; gave up"
            f" (RECEIVER_{provider.upper()}_GIVE_UP_AFTER or RECEIVER_GIVE_UP_AFTER)"
        ),
        error_code="gave_up",
    )


def create_unresolved(provider: str, seconds: float) -> Update:
    """The failure recorded for a job whose create call had no clear answer, and of whose
    task no callback or status answer told us by its give-up age."""
    hours = seconds / 3600
    return Update(
        status=Status.FAILED,
        raw_status="create_uncertain",
        error=(
            f"the create call to {provider} had no clear answer (a timeout, a dropped"
            f" connection or a gateway error), so {provider} may have created the task"
            f" (and charged for it), but nothing about it came in {hours:g} h; it was not"
            " sent again. Check the provider's own dashboard"
        ),
        error_code="create_uncertain",
    )


def never_sent(provider: str, seconds: float) -> Update:
    """The failure recorded for a job that waited for a slot under its provider's
    RECEIVER_<PROVIDER>_MAX_RUNNING until its give-up age: nothing was sent, nor paid."""
    hours = seconds / 3600
    return Update(
        status=Status.FAILED,
        raw_status="no_slot",
        error=(
            f"waited {hours:g} h for a slot under RECEIVER_{provider.upper()}_MAX_RUNNING;"
            f" it was never sent to {provider}, so nothing was charged"
        ),
        error_code="no_slot",
    )


class Poller(WorkLoop):
    """Runs due polls until stopped; `wake()` after scheduling one starts it at once."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        gateways: Mapping[str, ProviderGateway],
        *,
        interval: float = 10.0,
        max_interval: float = 300.0,
        concurrency: int = 8,
        idle_wait: float = 1.0,
        deadline_for: Callable[[str], float] = lambda provider: 900.0,
        give_up_for: Callable[[str], float] = lambda provider: 86400.0,
        limits: Mapping[str, ProviderLimits] | None = None,
    ):
        super().__init__(idle_wait=idle_wait)
        self.store = store
        self.ingest = ingest
        self.gateways = gateways
        self.interval = interval
        self.max_interval = max_interval
        self.concurrency = concurrency
        self.deadline_for = deadline_for
        self.give_up_for = give_up_for
        self.limits = dict(limits or {})
        # This process's worker id (receiver.heartbeat), stamped on the polls it leases.
        self.worker: str | None = None
        # Sends a create the provider asked us to repeat later (Submitter.retry_create).
        self.retry_create: Callable[[Job], Awaitable[None]] | None = None
        # Admits creates waiting for a slot (receiver.slots); runs beside this loop.
        self.slots: Slots | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Poll until stopped, with the slot keeper (if any provider is capped) beside."""
        if self.slots is None:
            await super().run()
            return
        self._keeper = asyncio.create_task(self.slots.run(), name="slots")
        try:
            await super().run()
        finally:
            self.slots.halt()
            self._keeper.cancel()  # a create it was sending stays uncertain: never sent twice
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    def halt(self) -> None:
        super().halt()
        if self.slots is not None:
            self.slots.halt()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop; creates the slot keeper is sending get up to `grace` seconds to answer,
        since one cut off mid-call is left uncertain (it may have reached the provider)."""
        await super().stop(grace)
        if self._keeper is not None and not self._keeper.done():
            await asyncio.wait({self._keeper}, timeout=grace)

    def delay(self, job: Job) -> float:
        return poll_delay(job, interval=self.interval, cap=self.max_interval, at=now())

    def _limits(self, provider: str) -> ProviderLimits:
        if provider not in self.limits:
            self.limits[provider] = ProviderLimits(provider)
        return self.limits[provider]

    async def before_start(self) -> None:
        """Give open jobs with nothing scheduled a deadline: they were open while we were down."""
        for name, gateway in self.gateways.items():
            if gateway.adapter.can_pull and gateway.settings.base_url:
                count = await self.store.schedule_unscheduled_polls(
                    name, deadline=self.deadline_for(name)
                )
                if count:
                    log.info("%s: %d open jobs will be checked after their deadline", name, count)

    async def next_due(self) -> float | None:
        return await self.store.next_poll_at()

    async def run_once(self) -> int:
        """Poll every job that is due now (up to `concurrency`); return how many."""
        jobs = await self.store.claim_polls(
            limit=self.concurrency, lease=120.0, at=now(), worker=self.worker
        )
        if jobs:
            await asyncio.gather(*(self.poll(job) for job in jobs))
        return len(jobs)

    async def poll(self, job: Job) -> None:
        """Ask the provider about `job` and record the answer, or schedule another try."""
        if job.task_id is None and job.create_state == CREATE_WAITING:
            if self.retry_create is not None:
                await self.retry_create(job)
            else:  # not this process's work: leave it to one that can send it
                await self.store.schedule_poll(job.id, now() + self.interval, attempted=False)
            return
        if job.task_id is None and job.create_state == CREATE_SLOT:
            await self._waited_for_slot(job)
            return
        if job.task_id is None and job.create_state is not None:
            await self._unsettled_create(job)
            return
        gateway = self.gateways.get(job.provider)
        if gateway is None or job.task_id is None or not gateway.adapter.can_pull:
            await self.store.schedule_poll(job.id, None, attempted=False)
            return
        bind(job_id=job.id, provider=job.provider)
        limits = self._limits(job.provider)
        at = now()
        too_old = at - job.created_at >= self.give_up_for(job.provider)
        later = limits.wait_until(at)
        if later is not None and not too_old:
            # The provider asked for a pause or its circuit is open: not this job's fault.
            METRICS.poll(job.provider, "deferred")
            await self.store.schedule_poll(job.id, later + random.uniform(0, 1), attempted=False)
            return
        update = None if later is not None else await self._pull(gateway, job, limits)
        if too_old and (update is None or not update.status.terminal):
            if update is not None:
                await self.ingest.record(Write(update=update, source="poll", job_id=job.id))
            give_up_after = self.give_up_for(job.provider)
            log.warning(
                "%s: %s still open after %.0f s; failing it",
                job.provider,
                job.id,
                at - job.created_at,
            )
            failure = gave_up(job.provider, give_up_after)
            await self.ingest.record(Write(update=failure, source="receiver", job_id=job.id))
            return
        if update is not None:
            next_poll_at = now() + self.delay(job)
            await self.ingest.record(
                Write(update=update, source="poll", job_id=job.id, next_poll_at=next_poll_at)
            )

    async def _waited_for_slot(self, job: Job) -> None:
        """A job still waiting for a slot (nothing sent) at its give-up age is failed."""
        give_up_after = self.give_up_for(job.provider)
        give_up_at = job.created_at + give_up_after
        if now() < give_up_at:
            await self.store.schedule_poll(job.id, give_up_at, attempted=False)
            return
        log.warning("%s: %s never got a slot; failing it", job.provider, job.id)
        failure = never_sent(job.provider, give_up_after)
        await self.ingest.record(Write(update=failure, source="receiver", job_id=job.id))

    async def _unsettled_create(self, job: Job) -> None:
        """A job whose create had no clear answer: no provider here can look a task up
        without its id, so wait for a callback until the give-up age, then fail it."""
        give_up_after = self.give_up_for(job.provider)
        give_up_at = job.created_at + give_up_after
        if now() < give_up_at:
            await self.store.schedule_poll(job.id, give_up_at, attempted=False)
            return
        log.warning(
            "%s: %s had no clear create answer and no news; failing it", job.provider, job.id
        )
        failure = create_unresolved(job.provider, give_up_after)
        await self.ingest.record(Write(update=failure, source="receiver", job_id=job.id))

    async def _pull(
        self, gateway: ProviderGateway, job: Job, limits: ProviderLimits
    ) -> Update | None:
        """One pull within the provider's limits; None (and a retry scheduled) on failure."""
        assert job.task_id is not None
        async with limits.slots:
            try:
                update = await gateway.pull(job.task_id)
            except StoreUnavailable:
                raise
            except Exception as exc:
                METRICS.poll(job.provider, "error")
                if isinstance(exc, ReceiverError):
                    log.warning("poll of %s at %s failed: %s", job.id, job.provider, exc)
                else:  # a bug: one job's poll must not stop the others
                    log.exception("poll of %s at %s failed unexpectedly", job.id, job.provider)
                at = now()
                asked = limits.failed(exc, at)
                await self.store.schedule_poll(
                    job.id, self._retry_at(job, limits, asked, at), attempted=True
                )
                return None
        METRICS.poll(job.provider, "ok")
        limits.succeeded()
        return update

    async def renew(self, job: Job) -> Job | None:
        """Pull a succeeded job's status once more: the result URLs it has expired.

        A success statement with links the job lacks is recorded as a renewal, through
        `ingest` like any poll, so the job's URLs change only by the provider's own word
        and nothing fires again. The job as recorded then; None when the answer brought
        no fresh link. ProviderError when the provider has no status API (or is not
        configured, or asked for a pause) or the pull failed.
        """
        gateway = self.gateways.get(job.provider)
        if gateway is None or not gateway.adapter.can_pull:
            raise ProviderError(f"{job.provider} has no status API to ask for a fresh URL")
        if job.task_id is None:
            raise ProviderError(f"{job.id} has no task id to ask {job.provider} about")
        limits = self._limits(job.provider)
        if limits.wait_until(now()) is not None:
            raise ProviderError(f"{job.provider} asked for a pause; not asked for a fresh URL")
        async with limits.slots:
            try:
                update = await gateway.pull(job.task_id)
            except Exception as exc:  # accounted for as any failed pull, then the caller's
                METRICS.poll(job.provider, "error")
                limits.failed(exc, now())
                raise
        METRICS.poll(job.provider, "ok")
        limits.succeeded()
        fresh = {update.result_url, update.preview_url} - {None, job.result_url, job.preview_url}
        if update.status is not Status.SUCCEEDED or not fresh:
            return None
        return (await self.ingest.record(Write(update=update, source=RENEWAL, job_id=job.id))).job

    def _retry_at(self, job: Job, limits: ProviderLimits, asked: float | None, at: float) -> float:
        """After a failed pull: what the provider asked for, else back off with its failures."""
        if asked is not None:
            return asked + random.uniform(0, 1)
        backoff = self.interval * float(2 ** min(limits.failures, 10))
        delay = min(self.max_interval, max(self.delay(job), backoff))
        return at + delay * random.uniform(0.8, 1.2)
