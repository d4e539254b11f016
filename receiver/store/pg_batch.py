"""PostgreSQL ingest in batches: many callers' records and nudges in one transaction.

A batch costs a fixed number of round trips whatever its size: lock every job it names
(one statement, in id order, so two batches in two processes never deadlock), ask which
of its events are duplicates and which of its jobs' handlers have a delivery unfinished
(one statement), then write every request, new job, job state, event and delivery, with
the NOTIFY, as one statement of data-modifying CTEs fed by arrays. Between the two, the
state machine (receiver.state) runs here for each item in arrival order on the jobs as
the earlier items left them, exactly as one transaction per item would have. An item
whose own step fails (no such job, a refusing `accept`) fails alone and writes nothing;
the rest of the batch goes on.

A delivery the recording process has room for is written claimed by it (Store.record's
`claim`), as on SQLite: it runs there as soon as the batch commits, with no claim
statement and no second write of its row. The job's lock keeps another process from
adding a delivery of the same job and handler meanwhile, and workers elsewhere only
claim the earliest unfinished one of each. A delivery whose handler has returned in this
process, its outcome (done or dead) not yet committed, holds nothing back: the outcomes
commit on their own, and a job's next callback often arrives before its last outcome has.

Deliveries' outcomes (done, a retry, dead) are batched too: one UPDATE fed by arrays,
which commits by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Any

import asyncpg
import msgspec

from receiver.models import DeliveryState, Job, RawRequest
from receiver.store.base import Claim, NewJob, Recorded, Router, TokenMatch, Write
from receiver.store.batcher import Outcome
from receiver.store.recording import apply_write, claimer, dedupe_key_of
from receiver.store.rows import (
    DELIVERIES,
    EVENTS,
    JOB_STATE_COLUMNS,
    JOBS,
    REQUESTS,
    event_values,
    job_state_values,
    to_json,
)

__all__ = [
    "DELIVERIES_CHANNEL",
    "POLLS_CHANNEL",
    "DeliveryWrite",
    "Nudge",
    "Record",
    "set_delivery_states",
    "write_batch",
    "write_rounds",
]

DELIVERIES_CHANNEL = "receiver_deliveries"
POLLS_CHANNEL = "receiver_polls"


class Record(msgspec.Struct, kw_only=True):
    """One `Store.record` (or, with `token_hash`, `record_by_token`) call's arguments."""

    write: Write
    route: Router
    claim: Claim | None = None
    token_hash: str | None = None
    accept: Callable[[TokenMatch], bool] | None = None


class Nudge(msgspec.Struct, kw_only=True):
    """One `Store.record_nudge` (or, with `token_hash`, `record_nudge_by_token`) call's
    arguments."""

    job_id: str | None = None
    raw: RawRequest
    poll_at: float
    token_hash: str | None = None
    accept: Callable[[TokenMatch], bool] | None = None


class DeliveryWrite(msgspec.Struct, kw_only=True):
    """One `Store.set_delivery_state` call's arguments."""

    delivery_id: str
    state: DeliveryState
    error: str | None
    next_attempt_at: float | None
    at: float
    attempt: int | None


async def set_delivery_states(
    db: asyncpg.Connection, items: Sequence[DeliveryWrite]
) -> list[Outcome]:
    """Apply every item, each fenced by its attempt (see Store.finish_delivery).

    One statement when every item names a different delivery; a delivery named twice
    takes its writes in order, one statement each, in one transaction.
    """
    rounds = write_rounds(items)
    if len(rounds) == 1:
        await db.execute(_SET_STATES, *_state_columns(rounds[0]))
    else:
        async with db.transaction():
            for writes in rounds:
                await db.execute(_SET_STATES, *_state_columns(writes))
    return [(True, None)] * len(items)


def write_rounds(items: Sequence[DeliveryWrite]) -> list[list[DeliveryWrite]]:
    """The items in rounds that each name a delivery once: an UPDATE joined to two rows for
    one target applies only one of them. A delivery's writes keep their order."""
    rounds: list[list[DeliveryWrite]] = []
    last: dict[str, int] = {}  # delivery id -> the round of its latest write
    for item in items:
        index = last.get(item.delivery_id, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
        last[item.delivery_id] = index
    return rounds


def _state_columns(writes: Sequence[DeliveryWrite]) -> list[list[Any]]:
    return _columns(
        [
            (w.delivery_id, w.state.value, w.error, w.next_attempt_at, w.at, w.attempt)
            for w in writes
        ],
        6,
    )


class _Row:
    """A locked (or new) job row as the batch's earlier items left it."""

    __slots__ = ("dirty", "job", "new", "next_poll_at", "poll_worker_id", "rank", "secret_hash")

    def __init__(
        self,
        job: Job,
        rank: float,
        next_poll_at: float | None,
        poll_worker_id: str | None,
        secret_hash: str | None,
        *,
        new: bool = False,
    ):
        self.job = job
        self.rank = rank
        self.next_poll_at = next_poll_at
        self.poll_worker_id = poll_worker_id
        self.secret_hash = secret_hash
        self.new = new
        self.dirty = False


class _Batch:
    """The rows a batch locked, the duplicates and unfinished deliveries known, and the
    writes it has gathered."""

    def __init__(self, rows: Sequence[Any], duplicates: set[tuple[str, str]]):
        self.by_id: dict[str, _Row] = {}
        self.by_token: dict[str, _Row] = {}
        self.by_task: dict[tuple[str, str | None], _Row] = {}
        for row in rows:
            job = JOBS.read(row)
            rank, next_poll_at, worker, token_hash, secret_hash = tuple(row)[JOBS.width :]
            self._add(_Row(job, rank, next_poll_at, worker, secret_hash), token_hash)
        self.duplicates = duplicates
        self.checked: set[tuple[str, str]] = set()
        # (job id, handler) of every delivery pending or running: stored, or added here.
        self.unfinished: set[tuple[str, str]] = set()
        self.requests: list[tuple[Any, ...]] = []
        self.new_jobs: list[tuple[_Row, NewJob]] = []
        self.events: list[tuple[Any, ...]] = []
        self.deliveries: list[tuple[Any, ...]] = []
        self.wake_workers = False  # a pending delivery was added: NOTIFY
        self.polls_moved = False

    def _add(self, row: _Row, token_hash: str | None) -> None:
        self.by_id[row.job.id] = row
        if token_hash is not None:
            self.by_token[token_hash] = row
        if row.job.task_id is not None:
            self.by_task[(row.job.provider, row.job.task_id)] = row

    def locked(self, item: Record) -> _Row | None:
        """The batch's row of the job `item` names (by URL token, id or task), if any."""
        if item.token_hash is not None:
            return self.by_token.get(item.token_hash)
        write = item.write
        if write.job_id is not None:
            return self.by_id.get(write.job_id)
        new = write.new_job
        if new is not None and new.job.task_id is not None:
            return self.by_task.get((new.job.provider, new.job.task_id))
        return None

    def job_of(self, item: Record) -> _Row | None:
        """The row `item` is about; a new one for a task not seen yet; None for a token
        that names no job or one `accept` refuses. LookupError for an unknown job id."""
        row = self.locked(item)
        if item.token_hash is not None:
            if row is None or item.accept is None:
                return None
            match = TokenMatch(job=row.job, secret_hash=row.secret_hash)
            return row if item.accept(match) else None
        if row is not None:
            return row
        write = item.write
        if write.job_id is not None:
            raise LookupError(f"no job {write.job_id}")
        new = write.new_job
        if new is None or new.job.task_id is None:
            raise ValueError("record() needs a job id or a new job with a task id")
        # Not in the batch's rows until its item's step succeeds (see `adopt`).
        return _Row(new.job, -1.0, new.next_poll_at, None, new.secret_hash, new=True)

    def adopt(self, row: _Row, new: NewJob) -> None:
        """Make a new job's row the batch's: inserted at the end, seen by later items."""
        self._add(row, new.token_hash)
        self.new_jobs.append((row, new))


async def write_batch(
    db: asyncpg.Connection,
    items: Sequence[Record | Nudge],
    *,
    finishing: Container[tuple[str, int]] = (),
) -> list[Outcome]:
    """Run every item in one transaction (already begun on `db`); one Outcome per item.

    `finishing` names the deliveries (id, attempt) whose handler has run to its end in
    this process while the write of that outcome has not committed yet: they do not
    hold back a claim.

    Raises only for the batch as a whole: a database error, on which the caller rolls
    back (and, for an error of one item's rows, runs the items again one at a time).
    """
    records = [item for item in items if isinstance(item, Record)]
    rows = await db.fetch(
        _LOCK_JOBS,
        [job_id for item in items if (job_id := _job_id(item)) is not None],
        [item.token_hash for item in items if item.token_hash is not None],
        *_columns(
            [
                (new.job.provider, new.job.task_id)
                for item in records
                if item.write.job_id is None and (new := item.write.new_job) is not None
            ],
            2,
        ),
    )
    batch = _Batch(rows, set())
    await _look_up(db, batch, records, finishing)
    outcomes: list[Outcome] = []
    for item in items:
        try:
            if isinstance(item, Nudge):
                outcomes.append((True, _nudge(batch, item)))
            else:
                outcomes.append((True, await _record(db, batch, item)))
        except (asyncpg.PostgresError, asyncpg.InterfaceError):
            raise  # the database's, not the item's: the transaction cannot go on
        except Exception as exc:  # this item's own failure: it wrote nothing
            outcomes.append((False, exc))
    await db.execute(_WRITE, *_write_params(batch))
    return outcomes


def _job_id(item: Record | Nudge) -> str | None:
    return item.write.job_id if isinstance(item, Record) else item.job_id


async def _look_up(
    db: asyncpg.Connection,
    batch: _Batch,
    records: list[Record],
    finishing: Container[tuple[str, int]],
) -> None:
    """Ask in one statement which of the items' dedupe keys the stored events have, and,
    for the locked jobs of items that may claim, which handlers have a delivery unfinished
    (one whose finish is being written is not, unless another runner has claimed it again
    since: its handler has returned, and the next one of its job may start)."""
    keys: list[tuple[str, str]] = []
    claiming: list[str] = []
    for item in records:
        if (row := batch.locked(item)) is not None:
            keys.append((row.job.id, dedupe_key_of(row.job, item.write.update)))
            if item.claim is not None:
                claiming.append(row.job.id)
    if not keys:
        return
    for job_id, key, handler, delivery_id, attempts in await db.fetch(
        _LOOK_UP, *_columns(keys, 2), claiming
    ):
        if handler is None:
            batch.duplicates.add((job_id, key))
        elif (delivery_id, attempts) not in finishing:
            batch.unfinished.add((job_id, handler))
    batch.checked.update(keys)


async def _is_duplicate(db: asyncpg.Connection, batch: _Batch, row: _Row, key: str) -> bool:
    """Whether an event of the job has `key`: stored before, or recorded earlier in the batch.

    A key not asked about up front (the job got its task id from an earlier item of the
    batch) costs a statement of its own.
    """
    pair = (row.job.id, key)
    if pair not in batch.checked and not row.new:
        if await db.fetchval(_CHECK_DUPLICATE, *pair):
            batch.duplicates.add(pair)
        batch.checked.add(pair)
    return pair in batch.duplicates


async def _record(db: asyncpg.Connection, batch: _Batch, item: Record) -> Recorded | None:
    """One record's step: the state machine on the row, its writes added to the batch's."""
    row = batch.job_of(item)
    if row is None:
        return None
    job, write = row.job, item.write
    key = dedupe_key_of(job, write.update)
    duplicate = await _is_duplicate(db, batch, row, key)
    # A job new to the database may have had an earlier item in this batch.
    unseen = row.new and job.id not in batch.by_id
    recorded, transition = apply_write(
        job,
        row.rank,
        unseen,
        write,
        duplicate=duplicate,
        route=item.route,
        claim=item.claim,
        claimable=lambda handler: (job.id, handler) not in batch.unfinished,
    )
    # Nothing above failed: the item's effects join the batch.
    if unseen and write.new_job is not None:
        batch.adopt(row, write.new_job)
    _move(row, recorded.job, transition.changed, transition.preview_rank, write.next_poll_at)
    batch.duplicates.add((job.id, key))
    batch.checked.add((job.id, key))
    raw = write.raw
    if raw is not None:  # its job is its event's (0012_leaner_rows): no job id of its own
        batch.requests.append((*REQUESTS.values(raw), None))
    batch.events.append((*event_values(recorded.event, raw.body if raw is not None else None), key))
    for delivery in recorded.deliveries:
        batch.deliveries.append((*DELIVERIES.values(delivery), claimer(delivery, item.claim)))
        batch.unfinished.add((job.id, delivery.handler))
        batch.wake_workers |= delivery.state is DeliveryState.PENDING
    return recorded


def _move(row: _Row, after: Job, changed: bool, rank: float, next_poll_at: float | None) -> None:
    """Leave `row` as one transaction's job-state UPDATE would have: a terminal job is
    never polled again, and a poll's outcome (a new schedule, or the end) ends its lease."""
    if changed:
        row.job, row.rank, row.dirty = after, rank, True
        if after.status.terminal:
            row.next_poll_at, row.poll_worker_id = None, None
        elif next_poll_at is not None:
            row.next_poll_at, row.poll_worker_id = next_poll_at, None
    elif next_poll_at is not None and not after.status.terminal:
        row.next_poll_at, row.poll_worker_id, row.dirty = next_poll_at, None, True


def _nudge(batch: _Batch, item: Nudge) -> Job | None:
    """Keep the nudge's request; have an open job polled at `poll_at`. The job nudged; for
    a token that names no job or one `accept` refuses, None, with nothing written."""
    if item.token_hash is not None:
        row = batch.by_token.get(item.token_hash)
        if row is None or item.accept is None:
            return None
        if not item.accept(TokenMatch(job=row.job, secret_hash=row.secret_hash)):
            return None
        job_id = row.job.id
    else:
        assert item.job_id is not None, "a nudge names a job or a token"
        job_id = item.job_id
        row = batch.by_id.get(job_id)
    batch.requests.append((*REQUESTS.values(item.raw), job_id))
    if row is not None and not row.job.status.terminal:
        row.next_poll_at, row.dirty = item.poll_at, True
        batch.polls_moved = True
    return row.job if row is not None else None


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays `unnest` takes back apart."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _job_state(row: _Row) -> tuple[Any, ...]:
    return (
        row.job.id,
        *job_state_values(row.job, row.rank),
        row.next_poll_at,
        row.poll_worker_id,
    )


def _new_job(row: _Row, new: NewJob) -> tuple[Any, ...]:
    # Inserted as the batch left it: one row written, never an insert then an update.
    return (
        *JOBS.values(row.job),
        new.token_hash,
        new.secret_hash,
        to_json(new.input),
        row.next_poll_at,
        new.request_hash,
        row.rank,
    )


def _write_params(batch: _Batch) -> list[Any]:
    states = [_job_state(row) for row in batch.by_id.values() if row.dirty and not row.new]
    return [
        *_columns(batch.requests, len(_REQUEST_COLUMNS)),
        *_columns([_new_job(row, new) for row, new in batch.new_jobs], len(_NEW_JOB_COLUMNS)),
        *_columns(states, len(_STATE_COLUMNS)),
        *_columns(batch.events, len(_EVENT_COLUMNS)),
        *_columns(batch.deliveries, len(_DELIVERY_COLUMNS)),
        batch.wake_workers,
        batch.polls_moved,
    ]


# Column types for the arrays; every column not named here is text.
_TYPES = {
    "received_at": "float8",
    "created_at": "float8",
    "updated_at": "float8",
    "progress": "float8",
    "estimated_cost": "float8",
    "cost": "float8",
    "next_poll_at": "float8",
    "preview_rank": "float8",
    "next_attempt_at": "float8",
    "lease_until": "float8",
    "body": "bytea",
    "attempts": "int4",
}


def _unnest(columns: Sequence[str], first: int) -> str:
    """`unnest($first::type[], ...) WITH ORDINALITY AS v(columns..., n)`."""
    arrays = ", ".join(
        f"${first + i}::{_TYPES.get(name, 'text')}[]" for i, name in enumerate(columns)
    )
    return f"unnest({arrays}) WITH ORDINALITY AS v({', '.join(columns)}, n)"


def _insert_all(table: str, columns: Sequence[str], first: int) -> str:
    """Insert every row of the arrays from `$first` on, in their order (ids follow it)."""
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM {_unnest(columns, first)} ORDER BY n"


_REQUEST_COLUMNS = (*REQUESTS.columns, "job_id")
_NEW_JOB_COLUMNS = (
    *JOBS.columns,
    "token_hash",
    "secret_hash",
    "input",
    "next_poll_at",
    "request_hash",
    "preview_rank",
)
_STATE_COLUMNS = ("id", *JOB_STATE_COLUMNS, "next_poll_at", "poll_worker_id")
_EVENT_COLUMNS = (*EVENTS.columns, "payload_from", "dedupe_key")
_DELIVERY_COLUMNS = (*DELIVERIES.columns, "worker_id")


def _write_statement() -> str:
    first = 1
    parts = []
    for name, columns in (("requests", _REQUEST_COLUMNS), ("jobs", _NEW_JOB_COLUMNS)):
        parts.append(f"{name}_w AS ({_insert_all(name, columns, first)})")
        first += len(columns)
    assignments = ", ".join(f"{name} = v.{name}" for name in _STATE_COLUMNS[1:])
    parts.append(
        f"states_w AS (UPDATE jobs SET {assignments}"
        f" FROM {_unnest(_STATE_COLUMNS, first)} WHERE jobs.id = v.id)"
    )
    first += len(_STATE_COLUMNS)
    for name, columns in (("events", _EVENT_COLUMNS), ("deliveries", _DELIVERY_COLUMNS)):
        parts.append(f"{name}_w AS ({_insert_all(name, columns, first)})")
        first += len(columns)
    # NOTIFY is delivered at commit, to every listening process: for a pending delivery
    # (what is claimed already runs here) and for a moved poll, the last two parameters.
    return (
        f"WITH {', '.join(parts)}"
        f" SELECT CASE WHEN ${first}::bool THEN pg_notify('{DELIVERIES_CHANNEL}', '') END,"
        f" CASE WHEN ${first + 1}::bool THEN pg_notify('{POLLS_CHANNEL}', '') END"
    )


_WRITE = _write_statement()

# Every job the batch names, by id, URL token or (provider, task id), locked in id order.
_LOCK_JOBS = (
    f"SELECT {JOBS.select}, preview_rank, next_poll_at, poll_worker_id, token_hash, secret_hash"
    " FROM jobs WHERE id IN ("
    "  SELECT id FROM jobs WHERE id = ANY($1::text[])"
    "  UNION SELECT id FROM jobs WHERE token_hash = ANY($2::text[])"
    "  UNION SELECT j.id FROM jobs j JOIN unnest($3::text[], $4::text[]) AS t(provider, task_id)"
    "   ON j.provider = t.provider AND j.task_id = t.task_id)"
    " ORDER BY id FOR UPDATE"
)
# The stored duplicates (job id, key, NULL...) and the unfinished deliveries (job id,
# NULL, handler, delivery id, attempts), which a claim must not overtake.
_LOOK_UP = (
    "SELECT e.job_id, e.dedupe_key, NULL::text, NULL::text, NULL::int FROM events e"
    " JOIN unnest($1::text[], $2::text[]) AS k(job_id, dedupe_key)"
    " ON e.job_id = k.job_id AND e.dedupe_key = k.dedupe_key"
    " UNION ALL SELECT d.job_id, NULL, d.handler, d.id, d.attempts FROM deliveries d"
    " WHERE d.job_id = ANY($3::text[]) AND d.state IN ('pending', 'running')"
)
_CHECK_DUPLICATE = "SELECT EXISTS (SELECT 1 FROM events WHERE job_id = $1 AND dedupe_key = $2)"
# A runner's write applies only while its own claim stands (see Store.finish_delivery).
# The lease ends, and the worker's stamp with it (only running rows are ever asked whose
# they are): a finished row keeps no worker id (0011_lean_rows).
_SET_STATES = (
    "UPDATE deliveries d SET state = v.state, last_error = COALESCE(v.error, d.last_error),"
    " next_attempt_at = COALESCE(v.next_attempt_at, d.next_attempt_at), lease_until = NULL,"
    " worker_id = NULL, updated_at = v.at"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::int4[])"
    " AS v(id, state, error, next_attempt_at, at, attempt)"
    " WHERE d.id = v.id AND (v.attempt IS NULL OR (d.state = 'running' AND d.attempts = v.attempt))"
)
