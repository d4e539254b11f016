"""The canonical data model: jobs, the events that move them, and handler deliveries."""

from __future__ import annotations

import enum
import os
import threading
import time
from typing import Any

import msgspec

__all__ = [
    "CREATE_SLOT",
    "CREATE_UNCERTAIN",
    "CREATE_WAITING",
    "TERMINAL",
    "Delivery",
    "DeliveryState",
    "Disposition",
    "Event",
    "Job",
    "Quarantined",
    "RawRequest",
    "Status",
    "StoredFile",
    "Update",
    "first_id_at",
    "id_at",
    "new_id",
    "now",
]


class Status(enum.StrEnum):
    """The canonical status every provider's own vocabulary is mapped onto."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class Disposition(enum.StrEnum):
    """What the state machine made of an event."""

    APPLIED = "applied"  # moved the job forward and fired handlers
    DUPLICATE = "duplicate"  # same dedupe key as an earlier event: stored, fires nothing
    LATE = "late"  # arrived after a terminal state or with older progress: stored, fires nothing
    # Fresh result URLs for a succeeded job, asked for because its own expired: fires nothing.
    RENEWED = "renewed"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Every 10-bit value as two characters: an id is 13 table lookups, not 26 shifts and masks
# (ids are made for every stored row).
_PAIRS = [_CROCKFORD[n >> 5] + _CROCKFORD[n & 31] for n in range(1024)]
_SHIFTS = range(120, -1, -10)
_last_id = [0, 0]  # milliseconds and random part of the last id this process made


class _RandomPool:
    """The OS's random bytes, read 4,000 at a time: one system call per 400 ids, not per id."""

    def __init__(self) -> None:
        self.data = b""
        self.used = 0

    def take_80_bits(self) -> int:
        if self.used + 10 > len(self.data):
            self.data, self.used = os.urandom(4000), 0
        start = self.used
        self.used += 10
        return int.from_bytes(self.data[start : start + 10], "big")

    def forget(self) -> None:
        self.data, self.used = b"", 0


_random = _RandomPool()
_id_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The child must not hand out its parent's next random bytes again, nor inherit a
    # lock held by a thread it does not have.
    global _id_lock
    _id_lock = threading.Lock()
    _random.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_id(prefix: str) -> str:
    """A sortable, unguessable id: 48 bits of milliseconds then 80 random bits (ULID layout).

    Ids made in the same millisecond by one process increase, so sorting by id is
    sorting by creation, which the job list's cursor relies on.
    """
    with _id_lock:  # a sync handler's thread may make ids too
        millis = int(time.time() * 1000)
        random_part = _random.take_80_bits()
        if millis <= _last_id[0]:
            millis = _last_id[0]
            random_part = (_last_id[1] + 1 + (random_part >> 64)) % (1 << 80)
        _last_id[0], _last_id[1] = millis, random_part
    return f"{prefix}_{base32((millis << 80) | random_part)}"


def id_at(prefix: str, at: float) -> str:
    """An id as `new_id` makes it at `at` (Unix seconds), with fresh random bits, for a row
    stamped with a time that is not the clock's: an event's own time, an injected clock's.

    It stays out of `new_id`'s sequence, which never goes back: its order among the ids of
    the same millisecond is random.
    """
    with _id_lock:
        random_part = _random.take_80_bits()
    return f"{prefix}_{base32((_millis(at) << 80) | random_part)}"


def first_id_at(prefix: str, at: float) -> str:
    """The smallest id of `prefix` minted at `at`: every id minted earlier sorts below it."""
    return f"{prefix}_{base32(_millis(at) << 80)}"


_LAST_MILLIS = (1 << 48) - 1  # an id's time field, full: the year 10889


def _millis(at: float) -> int:
    """`at` as an id holds it: whole milliseconds in 48 bits. A time past them (a query's
    `since` of infinity) is the last; one before 1970, the first."""
    if not at * 1000 < _LAST_MILLIS:  # NaN too
        return _LAST_MILLIS
    return max(int(at * 1000), 0)


def base32(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 characters, most significant first."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def now() -> float:
    """Wall-clock seconds since the epoch; every stored time uses it."""
    return time.time()


class Update(msgspec.Struct, frozen=True):
    """A provider's statement about a task, already in canonical terms (an adapter's output)."""

    status: Status
    raw_status: str
    task_id: str | None = None
    progress: float | None = None
    result_url: str | None = None
    preview_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    # The provider's own id for this notification, when it has one: a better dedupe key.
    delivery_id: str | None = None
    payload: dict[str, Any] | None = None


class StoredFile(msgspec.Struct, kw_only=True):
    """A copy of a job's result (or preview) kept on local disk by the download handler."""

    path: str
    sha256: str
    size: int
    content_type: str | None = None
    url: str  # where it was fetched from (provider URLs expire)
    stored_at: float
    # The link tried first, when it had expired and `url` is the fresh one the provider gave.
    renewed_from: str | None = None


# Job.create_state: the create call's outcome is unknown (receiver.submit), or the
# provider asked for it again later and it waits for the poller, or the provider has as
# many jobs in flight as RECEIVER_<PROVIDER>_MAX_RUNNING allows and it waits for a slot.
CREATE_UNCERTAIN = "uncertain"
CREATE_WAITING = "waiting"
CREATE_SLOT = "slot"


class Job(msgspec.Struct, kw_only=True):
    """One generation task at one provider, as the receiver knows it now."""

    id: str
    provider: str
    task_id: str | None
    status: Status
    raw_status: str | None = None
    progress: float | None = None
    result_url: str | None = None
    preview_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float
    updated_at: float
    # Local copies by name ("result", "preview"), written by the download handler.
    files: dict[str, StoredFile] = msgspec.field(default_factory=dict)
    # Where this job's events are also POSTed, signed (given at submit time).
    notify_url: str | None = None
    # The submitter's Idempotency-Key: the same key never makes a second job.
    idempotency_key: str | None = None
    # What is known of the create call: None when it answered; CREATE_UNCERTAIN when its
    # outcome is unknown, so the provider may have the task; CREATE_WAITING while a create
    # the provider asked us to repeat later waits; CREATE_SLOT while it waits for a free
    # slot under the provider's RECEIVER_<PROVIDER>_MAX_RUNNING (nothing sent yet).
    create_state: str | None = None
    # What the job is expected to cost (at submission, from the provider's configured
    # price) and what it cost once it ended (0 for a failure the provider does not bill);
    # None when the provider has no price configured.
    estimated_cost: float | None = None
    cost: float | None = None
    # The provider group (receiver.toml [groups]) it was submitted to; `provider` is the
    # member that took it.
    provider_group: str | None = None


class Event(msgspec.Struct, kw_only=True):
    """One stored statement about a job, whatever its disposition."""

    id: str
    job_id: str
    provider: str
    task_id: str | None
    status: Status
    raw_status: str
    progress: float | None = None
    result_url: str | None = None
    preview_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    # callback | poll | submit | renewal (a pull for fresh result URLs) | trigger | receiver
    # (the receiver's own decision: give-up)
    source: str
    disposition: Disposition = Disposition.APPLIED
    received_at: float
    request_id: str | None = None
    payload: dict[str, Any] | None = None


class Delivery(msgspec.Struct, kw_only=True):
    """One (event, handler) pair; its id is the handler's idempotency key."""

    id: str
    event_id: str
    job_id: str
    handler: str
    state: DeliveryState
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_until: float | None = None
    last_error: str | None = None
    created_at: float
    updated_at: float


class RawRequest(msgspec.Struct, kw_only=True):
    """A request as it reached us, with secrets already redacted; kept for diagnosis."""

    id: str
    received_at: float
    provider: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str | None = None
    # Our answer's HTTP status and its latency (received -> answer sent), in ms: written
    # shortly after the answer (receiver.answers), so None for a moment, or for good if
    # the process died first.
    answer_status: int | None = None
    answer_ms: float | None = None


class Quarantined(msgspec.Struct, kw_only=True):
    """A rejected request and why it was rejected."""

    id: str
    received_at: float
    provider: str
    reason: str
    status_code: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str | None = None
