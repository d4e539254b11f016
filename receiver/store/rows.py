"""Mapping between the model Structs and table rows, shared by every SQL backend.

Each `Table` names the columns a Struct is read from, in order, and which of them hold
JSON. Column names equal field names, so a row converts with msgspec in one step.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from receiver.models import Delivery, Event, Job, Quarantined, RawRequest, Status, first_id_at

__all__ = [
    "ANSWERED_REQUESTS",
    "DELIVERIES",
    "EVENTS",
    "EVENT_SELECT",
    "EVENT_WIDTH",
    "JOBS",
    "JOB_COUNTS",
    "JOB_STATE_COLUMNS",
    "NOT_SUCCEEDED",
    "PRICED",
    "QUARANTINE",
    "REQUESTS",
    "Table",
    "event_values",
    "job_counts_of",
    "job_state_values",
    "list_status_terms",
    "prune_values",
    "read_event",
    "spend_bound",
    "to_json",
]

T = TypeVar("T", bound=msgspec.Struct)

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def to_json(value: Any) -> str | None:
    """A JSON column's text; None stays NULL."""
    return None if value is None else _encode(value).decode()


class Table(Generic[T]):
    """How one Struct is stored: its columns in order and the ones that hold JSON."""

    def __init__(
        self,
        kind: type[T],
        columns: Sequence[str],
        json: Sequence[str] = (),
        binary: Sequence[str] = (),
    ):
        self.kind = kind
        self.columns = tuple(columns)
        self.json = frozenset(json)
        self.binary = frozenset(binary)  # `bytes` fields, which may arrive bytes-like
        self.select = ", ".join(self.columns)
        self.width = len(self.columns)
        self._json_at = [i for i, name in enumerate(self.columns) if name in self.json]
        # For `values`: the Struct's fields picked in column order, in C, then the few
        # columns that need converting (JSON text; bytes-like bodies to bytes).
        # Field names, not `msgspec.structs.fields`: that resolves every annotation, which
        # cost a cold start about 20 ms for these five tables.
        fields = list(kind.__struct_fields__)
        self._pick = operator.itemgetter(*(fields.index(name) for name in self.columns))
        self._convert = [
            (i, to_json if name in self.json else _plain)
            for i, name in enumerate(self.columns)
            if name in self.json or name in self.binary
        ]

    def read(self, row: Sequence[Any]) -> T:
        """The Struct of a row whose first columns are `self.columns`."""
        values = dict(zip(self.columns, row, strict=False))
        for i in self._json_at:
            name = self.columns[i]
            if values[name] is not None:
                values[name] = _decode(values[name])
        return msgspec.convert(values, self.kind)

    def select_as(self, alias: str) -> str:
        """The columns qualified by a table alias, for joins."""
        return ", ".join(f"{alias}.{name}" for name in self.columns)

    def values(self, item: T) -> tuple[Any, ...]:
        """The row of `item`, in column order, ready for an INSERT."""
        row: tuple[Any, ...] = self._pick(msgspec.structs.astuple(item))
        if not self._convert:
            return row
        converted = list(row)
        for i, convert in self._convert:
            converted[i] = convert(converted[i])
        return tuple(converted)


def _plain(value: Any) -> Any:
    # Enums are stored by value: StrEnum already is a str, so only bytes-like need care.
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


JOBS = Table(
    Job,
    (
        "id",
        "provider",
        "task_id",
        "status",
        "raw_status",
        "progress",
        "result_url",
        "preview_url",
        "error",
        "error_code",
        "metadata",
        "created_at",
        "updated_at",
        "files",
        "notify_url",
        "idempotency_key",
        "create_state",
        "estimated_cost",
        "cost",
        "provider_group",
    ),
    json=("metadata", "files"),
)
EVENTS = Table(
    Event,
    (
        "id",
        "job_id",
        "provider",
        "task_id",
        "status",
        "raw_status",
        "progress",
        "result_url",
        "preview_url",
        "error",
        "error_code",
        "source",
        "disposition",
        "received_at",
        "request_id",
        "payload",
    ),
    json=("payload",),
)
DELIVERIES = Table(
    Delivery,
    (
        "id",
        "event_id",
        "job_id",
        "handler",
        "state",
        "attempts",
        "next_attempt_at",
        "lease_until",
        "last_error",
        "created_at",
        "updated_at",
    ),
)
REQUESTS = Table(
    RawRequest,
    ("id", "received_at", "provider", "method", "path", "query", "headers", "body", "client"),
    json=("headers",),
    binary=("body",),
)
# For reading: a stored request with our answer to it, which is written after the insert
# (receiver.answers) into a table of its own (answers: status, ms), read by a join.
ANSWERED_REQUESTS = Table(
    RawRequest,
    (*REQUESTS.columns, "answer_status", "answer_ms"),
    json=("headers",),
    binary=("body",),
)
QUARANTINE = Table(
    Quarantined,
    (
        "id",
        "received_at",
        "provider",
        "reason",
        "status_code",
        "method",
        "path",
        "query",
        "headers",
        "body",
        "client",
    ),
    json=("headers",),
    binary=("body",),
)


# A callback's body is stored once, in its request row. An event whose payload is that
# body, or one member of it (rixapi's "data"), keeps no copy: `payload_from` says where
# it is ('' the whole body, else the member's name) and `payload` is NULL. A payload that
# is neither (a poll's answer, a redacted or reshaped one) stays in `payload`.
_PAYLOAD_AT = EVENTS.columns.index("payload")
# Events are read with their request's body when their payload is there (`e` and `r`).
EVENT_SELECT = (
    f"{EVENTS.select_as('e')}, e.payload_from,"
    " CASE WHEN e.payload_from IS NOT NULL THEN"
    " (SELECT r.body FROM requests r WHERE r.id = e.request_id) END"
)
EVENT_WIDTH = EVENTS.width + 2


def _payload_from(payload: Any, text: str, body: bytes) -> str | None:
    """Where `payload` (encoded as `text`) is found in `body`, or None when it is not.

    Compared as encoded JSON, so reading it back from the body gives exactly the payload
    that `text` would have given.
    """
    try:
        decoded = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(decoded, dict):
        return None
    encoded = text.encode()
    if decoded == payload and _encode(decoded) == encoded:
        return ""
    for key, value in decoded.items():
        if isinstance(value, dict) and value == payload and _encode(value) == encoded:
            return str(key)
    return None


# What recording an update changes on its job (both stores' state writes), in the order
# of `job_state_values`.
JOB_STATE_COLUMNS = (
    "task_id",
    "status",
    "raw_status",
    "progress",
    "result_url",
    "preview_url",
    "preview_rank",
    "error",
    "error_code",
    "updated_at",
    "cost",
)


def job_state_values(job: Job, preview_rank: float) -> tuple[Any, ...]:
    """The values of JOB_STATE_COLUMNS for `job` as an update left it."""
    return (
        job.task_id,
        job.status.value,
        job.raw_status,
        job.progress,
        job.result_url,
        job.preview_url,
        preview_rank,
        job.error,
        job.error_code,
        job.updated_at,
        job.cost,
    )


def event_values(event: Event, body: bytes | None) -> tuple[Any, ...]:
    """The row of `event` for an INSERT: EVENTS' columns, then `payload_from`.

    `body` is the event's request body (None without one): a payload found there is
    not stored again.
    """
    row = EVENTS.values(event)
    text = row[_PAYLOAD_AT]
    where = None if text is None or body is None else _payload_from(event.payload, text, body)
    if where is None:
        return (*row, None)
    return (*row[:_PAYLOAD_AT], None, *row[_PAYLOAD_AT + 1 :], where)


def read_event(row: Sequence[Any]) -> Event:
    """The Event of a row read with EVENT_SELECT, its payload taken from the body if there."""
    event = EVENTS.read(row)
    where, body = row[EVENTS.width], row[EVENTS.width + 1]
    if where is not None and body is not None:
        decoded = _decode(body)
        event.payload = decoded if where == "" else decoded.get(where)
    return event


def prune_values(before: float, *, limit: int | None, keep_from: float) -> dict[str, Any]:
    """Every named parameter a pruning statement may take: the cutoff, the batch's limit,
    where an event starts to keep its request, and the first event and request ids minted
    at the cutoff, the upper ends of the walks by id (0014_fewer_indexes)."""
    return {
        "before": before,
        "limit": limit,
        "keep_from": keep_from,
        "events_below": first_id_at("evt", before),
        "requests_below": first_id_at("req", before),
    }


# The predicate of the partial index jobs_status (0014_fewer_indexes): most jobs end
# succeeded, and those are walked by id. A query uses the index only if it has this term
# itself: SQLite looks for it, and PostgreSQL cannot prove it from a parameter.
NOT_SUCCEEDED = "status <> 'succeeded'"


def list_status_terms(status: str) -> list[str]:
    """The job list's terms beside `status = ?`: the index's own for a status it holds."""
    return [] if status == Status.SUCCEEDED else [NOT_SUCCEEDED]


# Every job, and those of each status jobs_status holds; succeeded ones are the rest.
JOB_COUNTS = (
    "SELECT NULL, COUNT(*) FROM jobs"
    f" UNION ALL SELECT status, COUNT(*) FROM jobs WHERE {NOT_SUCCEEDED} GROUP BY status"
)


def job_counts_of(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """JOB_COUNTS' rows as a count for every status."""
    others = {status: int(count) for status, count in rows if status is not None}
    total = sum(int(count) for status, count in rows if status is None)
    counts = {status.value: others.get(status.value, 0) for status in Status}
    counts[Status.SUCCEEDED.value] = total - sum(others.values())
    return counts


# The predicate of the partial index jobs_spend_day (0014_fewer_indexes): a job with
# neither a cost nor an estimate (every job of an unpriced provider) adds nothing to a
# budget's sum. A budget's sum (_SPENT) repeats it to use the index.
PRICED = "COALESCE(cost, estimated_cost) IS NOT NULL"


def spend_bound(since: float) -> str:
    """The smallest id a job created at or after `since` can have: spend() walks jobs by
    id from it (0014_fewer_indexes), as it counts priced and unpriced jobs alike. A job's
    id is minted after its created_at is stamped (submit.queued_job), never before."""
    return first_id_at("job", since)
