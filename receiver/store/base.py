"""The Store seam: a narrow async surface every backend (SQLite, PostgreSQL) implements.

The one method that matters most is `record`: the raw request, the canonical event,
the job's new state and one delivery per matching handler are committed together or
not at all. Everything a route or the dispatcher needs goes through this class, so a
backend can be swapped without touching them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from receiver.models import Delivery, DeliveryState, Event, Job, Quarantined, RawRequest, Update

__all__ = [
    "Claimed",
    "JobPage",
    "NewJob",
    "Recorded",
    "Router",
    "Store",
    "TokenMatch",
]

# Given the stored event and the job after it, the names of the handlers that must run.
Router = Callable[[Event, Job], Sequence[str]]


class NewJob(msgspec.Struct, kw_only=True):
    """A job to insert, with its credentials already hashed."""

    job: Job
    token_hash: str | None = None
    secret_hash: str | None = None
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    next_poll_at: float | None = None


class TokenMatch(msgspec.Struct, kw_only=True):
    """A job found by its URL token, with the secret digest its callbacks must match."""

    job: Job
    secret_hash: str | None


class Recorded(msgspec.Struct, kw_only=True):
    """The outcome of `Store.record`: the stored event, the job after it and the deliveries made."""

    event: Event
    job: Job
    deliveries: list[Delivery]


class Claimed(msgspec.Struct, kw_only=True):
    """A delivery leased to a runner, with what its handler is called with."""

    delivery: Delivery
    event: Event
    job: Job


class JobPage(msgspec.Struct, kw_only=True):
    items: list[Job]
    next: str | None


class Store(abc.ABC):
    """Durable state of the receiver. Raises StoreUnavailable when it cannot read or commit."""

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Jobs

    @abc.abstractmethod
    async def create_job(self, new: NewJob) -> None: ...

    @abc.abstractmethod
    async def set_task_id(self, job_id: str, task_id: str, next_poll_at: float | None) -> None:
        """Record the provider's task id once the create call answered."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def job_by_token(self, token_hash: str) -> TokenMatch | None: ...

    @abc.abstractmethod
    async def job_by_task(self, provider: str, task_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> JobPage:
        """Newest first; `before` is the `next` cursor of the previous page."""

    @abc.abstractmethod
    async def list_events(self, job_id: str, *, limit: int = 1000) -> list[Event]:
        """A job's events, oldest first."""

    # The hot path

    @abc.abstractmethod
    async def record(
        self,
        job_id: str | None,
        update: Update,
        *,
        source: str,
        route: Router,
        raw: RawRequest | None = None,
        new_job: NewJob | None = None,
        next_poll_at: float | None = None,
        at: float | None = None,
    ) -> Recorded:
        """Store one update in a single transaction: raw request, event, job state, deliveries.

        `job_id` names the job; with None, `new_job` is looked up by provider and task id
        and inserted when absent (a task submitted elsewhere). `next_poll_at` reschedules
        the job's next poll while it is not terminal.
        """

    @abc.abstractmethod
    async def record_nudge(self, job_id: str, raw: RawRequest, *, poll_at: float) -> None:
        """Keep a nudge's raw request and schedule the job's poll, in one transaction."""

    @abc.abstractmethod
    async def quarantine(self, entry: Quarantined) -> None: ...

    @abc.abstractmethod
    async def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]: ...

    @abc.abstractmethod
    async def list_requests(self, job_id: str) -> list[RawRequest]: ...

    # Deliveries

    @abc.abstractmethod
    async def claim_deliveries(self, *, limit: int, lease: float, at: float) -> list[Claimed]:
        """Lease due deliveries, oldest first, skipping any whose earlier sibling is unfinished."""

    @abc.abstractmethod
    async def finish_delivery(self, delivery_id: str, *, at: float) -> None: ...

    @abc.abstractmethod
    async def retry_delivery(
        self, delivery_id: str, *, error: str, next_attempt_at: float, at: float
    ) -> None: ...

    @abc.abstractmethod
    async def kill_delivery(self, delivery_id: str, *, error: str, at: float) -> None:
        """Mark a delivery dead: no more attempts."""

    @abc.abstractmethod
    async def release_running(self) -> int:
        """Put every running delivery back to pending (a single process restarting)."""

    @abc.abstractmethod
    async def next_delivery_at(self) -> float | None:
        """When the next delivery can be claimed (a due sibling-free one, or a lapsed lease)."""

    @abc.abstractmethod
    async def list_deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]: ...

    # Polls

    @abc.abstractmethod
    async def claim_polls(self, *, limit: int, lease: float, at: float) -> list[Job]:
        """Jobs whose poll is due; their next poll is pushed back by `lease` while it runs."""

    @abc.abstractmethod
    async def schedule_poll(self, job_id: str, at: float | None, *, attempted: bool) -> None: ...

    @abc.abstractmethod
    async def next_poll_at(self) -> float | None: ...
