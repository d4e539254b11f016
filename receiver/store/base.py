"""The Store seam: a narrow async surface every backend (SQLite, PostgreSQL) implements.

The one method that matters most is `record`: the raw request, the canonical event,
the job's new state and one delivery per matching handler are committed together or
not at all. Everything a route or the dispatcher needs goes through this class, so a
backend can be swapped without touching them.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from receiver.costs import Budget, Spend
from receiver.models import (
    Delivery,
    DeliveryState,
    Event,
    Job,
    Quarantined,
    RawRequest,
    StoredFile,
    Update,
    now,
)

__all__ = [
    "PRUNED_TABLES",
    "AnswerNote",
    "Claim",
    "Claimed",
    "DeliverySummary",
    "JobPage",
    "KeyedJob",
    "NewJob",
    "Reaped",
    "Recorded",
    "Router",
    "Spend",
    "Store",
    "TokenMatch",
    "Worker",
    "Write",
    "metadata_filter",
]

# Given the stored event and the job after it, the names of the handlers that must run,
# each once.
Router = Callable[[Event, Job], Sequence[str]]


_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def metadata_filter(pairs: Mapping[str, str]) -> dict[str, list[str]]:
    """`list_jobs(metadata=...)` from `key -> text` pairs, as a query string gives them.

    A text matches the string itself, and also the number, boolean or null it spells
    (`7` matches 7 and "7"). Keys are plain names; ValueError names a bad one.
    """
    wanted: dict[str, list[str]] = {}
    for key, text in pairs.items():
        if not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"metadata key {key[:64]!r} must be letters, digits and _.:- only")
        candidates = [msgspec.json.encode(text).decode()]
        try:
            parsed = msgspec.json.decode(text)
        except msgspec.DecodeError:
            parsed = text
        if parsed is None or isinstance(parsed, bool | int | float):
            candidates.append(msgspec.json.encode(parsed).decode())
        wanted[key] = candidates
    return wanted


class NewJob(msgspec.Struct, kw_only=True):
    """A job to insert, with its credentials already hashed."""

    job: Job
    token_hash: str | None = None
    secret_hash: str | None = None
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    next_poll_at: float | None = None
    # Checked against the jobs of the day in the same transaction as the insert: BudgetExceeded
    # (and no job) when the job's estimated cost would pass one.
    budgets: tuple[Budget, ...] = ()
    # The digest of the request that came with `job.idempotency_key` (receiver.submit).
    request_hash: str | None = None


class Write(msgspec.Struct, kw_only=True):
    """One update to store (`Store.record`), as a route builds it and the store takes it.

    `update` is what the provider said, `source` where it came from ("callback", "poll",
    "submit", `state.RENEWAL`, ...) and `raw` the request that carried it, kept with the
    event. The job is `job_id`; with None, `new_job` is looked up by provider and task id
    and inserted when absent (a task submitted elsewhere); by token (`record_by_token`)
    the token names it and both are None. `next_poll_at` reschedules the job's next poll
    while it is not terminal. `at` is when it happened, stamped on the event, the job and
    the deliveries: the time the Write was made unless given.
    """

    update: Update
    source: str
    raw: RawRequest | None = None
    job_id: str | None = None
    new_job: NewJob | None = None
    next_poll_at: float | None = None
    at: float = msgspec.field(default_factory=now)


class Claim(msgspec.Struct, kw_only=True, frozen=True):
    """Room the recording process has to run new deliveries itself (`Store.record`).

    Up to `most` of a write's new deliveries are stored already claimed, as
    `claim_deliveries` would leave them: running, attempt 1, leased for `lease` seconds
    and stamped with `worker` (its heartbeat's id, None where no heartbeat runs), so a
    worker that dies has them taken over as it would its other deliveries.
    """

    most: int
    lease: float
    worker: str | None = None


class KeyedJob(msgspec.Struct, kw_only=True):
    """A job found by its idempotency key, with the digest of the request that made it."""

    job: Job
    request_hash: str | None


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


class DeliverySummary(msgspec.Struct, kw_only=True):
    """How many deliveries are in each state, and when the oldest pending one was made."""

    counts: dict[str, int]
    oldest_pending_at: float | None


class AnswerNote(NamedTuple):
    """What we answered one stored request: its id, our HTTP status, the latency in ms."""

    request_id: str
    status: int
    latency_ms: float


class JobPage(msgspec.Struct, kw_only=True):
    items: list[Job]
    next: str | None


# The tables `Store.prune` deletes from, in the order it deletes them: children first.
PRUNED_TABLES = ("deliveries", "events", "requests", "quarantine", "jobs")


class Worker(msgspec.Struct, kw_only=True):
    """A process that runs handlers or polls, as its row in the `workers` table.

    `heartbeat_at` (and `started_at`) are the database's clock where it has one
    (PostgreSQL), so processes on hosts with skewed clocks agree on who is late.
    `pid_scope` names the PID namespace on this boot, "" when unknown. `timeout` is how
    late its heartbeat may be before it counts as dead: its own RECEIVER_WORKER_TIMEOUT,
    so processes configured differently never judge each other by the wrong one.
    """

    id: str
    host: str
    pid: int
    pid_scope: str = ""
    timeout: float = 15.0
    started_at: float = 0.0
    heartbeat_at: float = 0.0


class Reaped(msgspec.Struct, kw_only=True):
    """What `Store.reap_workers` took back: the dead workers' ids, and how much work."""

    workers: list[str]
    deliveries: int = 0
    polls: int = 0


class Store(abc.ABC):
    """Durable state of the receiver. Raises StoreUnavailable when it cannot read or commit."""

    url: str
    # True when several processes may share the database (PostgreSQL): a starting
    # dispatcher must then not release running deliveries, which may be another's.
    shared: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (SQLite), or check that it is (PostgreSQL)."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return their names. SQLite applies them in `open`."""
        await self.open()
        await self.close()
        return []

    async def listen(self, wake: Mapping[str, Callable[[], None]]) -> None:  # noqa: B027 - optional hook, empty by default
        """Call `wake["deliveries"]` or `wake["polls"]` when another process commits such work.

        A store used by one process has nobody else to hear from: the default does nothing.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Jobs

    @abc.abstractmethod
    async def create_job(self, new: NewJob) -> bool:
        """Insert `new`; False (nothing written) when its idempotency key has a job already;
        with budgets, only if none would pass (else BudgetExceeded).

        The key is UNIQUE in the table, so of concurrent inserts with one key one wins. Two
        concurrent inserts cannot both fit in room for one budget: the check and the insert
        are one transaction, serialised per budget.
        """

    @abc.abstractmethod
    async def job_by_idempotency_key(self, key: str) -> KeyedJob | None: ...

    @abc.abstractmethod
    async def set_create_state(
        self, job_id: str, state: str | None, next_poll_at: float | None
    ) -> None:
        """Record what is known of a job's create call (Job.create_state), and have the
        poller look at the job at `next_poll_at` unless it is due sooner already."""

    @abc.abstractmethod
    async def spend(self, *, since: float = 0.0, by: str | None = None) -> list[Spend]:
        """Spend of jobs created since `since`, by provider and UTC day (and metadata `by`)."""

    @abc.abstractmethod
    async def set_task_id(self, job_id: str, task_id: str, next_poll_at: float | None) -> None:
        """Record the provider's task id once the create call answered.

        The job's next poll becomes `next_poll_at` unless one is already due sooner: a
        callback that came before the id, kept until the status API confirms it, is
        pulled for as soon as the id is known.
        """

    @abc.abstractmethod
    async def defer_create(self, job_id: str, fields: Mapping[str, Any], at: float) -> None:
        """Keep a create the provider asked us to repeat later: create_state 'waiting', the
        fields as given (to be sent again) and the job due for the poller at `at`."""

    @abc.abstractmethod
    async def begin_create_retry(
        self, job_id: str, *, token_hash: str, secret_hash: str | None, next_poll_at: float
    ) -> dict[str, Any] | None:
        """Take a waiting create for sending, in one step: the job gets fresh credentials,
        create_state 'uncertain' (so a crash before its answer never sends it twice) and
        `next_poll_at`; the kept fields are returned and forgotten. None when the job was
        not waiting (another process took it)."""

    @abc.abstractmethod
    async def hold_for_slot(
        self, job_id: str, fields: Mapping[str, Any], give_up_at: float
    ) -> None:
        """Keep a create until its provider has a free slot (RECEIVER_<PROVIDER>_MAX_RUNNING):
        create_state 'slot', the fields as given (to be sent then), and the job due for
        the poller only at `give_up_at`, to fail it if it never got one."""

    @abc.abstractmethod
    async def admit_creates(self, provider: str, cap: int, *, at: float, lease: float) -> list[str]:
        """Admit the oldest jobs waiting for a slot at `provider`, as many as fit beside the
        jobs it has in flight (open jobs not waiting for a slot) under `cap`, in one step
        serialised per provider across processes. Each becomes a waiting create
        ('waiting', due at `at + lease`, so the poller sends it if its admitter cannot).
        Their ids, oldest first."""

    @abc.abstractmethod
    async def switch_provider(
        self, job_id: str, provider: str, *, token_hash: str, secret_hash: str | None
    ) -> bool:
        """Move a queued job of a provider group to the group's next member, after the one
        before refused its create: fresh credentials, no create state. False when the job
        is no longer queued."""

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
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> JobPage:
        """Newest first; `before` is the `next` cursor of the previous page.

        `metadata` maps a key to the JSON texts its value may have (`"acme"`, `7`): a job
        matches when, for every key, its metadata value encodes to one of them.
        """

    @abc.abstractmethod
    async def save_file(self, job_id: str, name: str, file: StoredFile) -> None:
        """Record a local copy of one of the job's files under `name` (replacing any)."""

    @abc.abstractmethod
    async def list_events(self, job_id: str, *, limit: int = 1000) -> list[Event]:
        """A job's events, oldest first."""

    # The hot path

    @abc.abstractmethod
    async def record(self, write: Write, *, route: Router, claim: Claim | None = None) -> Recorded:
        """Store one write in a single transaction: raw request, event, job state, deliveries.

        `route` names the handlers each applied event goes to. With `claim`, up to
        `claim.most` of the new deliveries are stored already claimed by the caller (see
        Claim): only those with no unfinished earlier delivery of their job and handler. A
        backend may claim fewer, or none; the rest are pending.
        """

    async def record_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        write: Write,
        *,
        route: Router,
        claim: Claim | None = None,
    ) -> Recorded | None:
        """`record` for the job whose URL token hashes to `token_hash`, if `accept` takes it.

        None, with nothing written, when there is no such job or `accept` refuses it (a
        wrong secret, another provider). A backend may do both in one transaction.
        """
        match = await self.job_by_token(token_hash)
        if match is None or not accept(match):
            return None
        write = msgspec.structs.replace(write, job_id=match.job.id)
        return await self.record(write, route=route, claim=claim)

    @abc.abstractmethod
    async def record_nudge(self, job_id: str, raw: RawRequest, *, poll_at: float) -> None:
        """Keep a nudge's raw request and schedule the job's poll, in one transaction."""

    async def record_nudge_by_token(
        self,
        token_hash: str,
        accept: Callable[[TokenMatch], bool],
        raw: RawRequest,
        *,
        poll_at: float,
    ) -> Job | None:
        """`record_nudge` for the job whose URL token hashes to `token_hash`, if `accept`
        takes it: the job as found, or None with nothing written (as `record_by_token`).
        A backend may do both in one transaction.
        """
        match = await self.job_by_token(token_hash)
        if match is None or not accept(match):
            return None
        await self.record_nudge(match.job.id, raw, poll_at=poll_at)
        return match.job

    @abc.abstractmethod
    async def quarantine(self, entry: Quarantined) -> None: ...

    @abc.abstractmethod
    async def list_quarantine(self, *, limit: int = 100) -> list[Quarantined]: ...

    @abc.abstractmethod
    async def trim_quarantine(self, *, keep: int, batch: int) -> int:
        """Delete up to `batch` of the oldest entries past the newest `keep`; how many went.

        Bounded, so no one call pays for a big delete: called often, it keeps the table near
        `keep` rows (see receiver.refusals).
        """

    @abc.abstractmethod
    async def list_requests(self, job_id: str) -> list[RawRequest]:
        """A job's stored requests, oldest first, with our answer to each once it is written."""

    @abc.abstractmethod
    async def save_answers(self, answers: Sequence[AnswerNote]) -> None:
        """Write our answers to stored requests, the whole batch in one transaction.

        Called after the answers were sent (receiver.answers), so a callback's commit never
        waits for it. An id with no stored request (a refusal, which the quarantine keeps;
        a 503 whose write failed; a request already pruned) changes nothing.
        """

    # Deliveries

    # `attempt` fences a runner's writes: given, a write applies only while the delivery is
    # still running under that attempt number. A runner whose lease ran out and whose
    # delivery was claimed again (the attempt number moved on) changes nothing.

    @abc.abstractmethod
    async def claim_deliveries(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Claimed]:
        """Lease due deliveries, oldest first, skipping any whose earlier sibling is unfinished.

        With `worker`, the deliveries are stamped with that worker's id, so they are taken
        back as soon as it is found dead (`reap_workers`); a worker whose row is gone (it
        was declared dead and has not registered again) claims nothing.
        """

    async def finish_delivery(
        self, delivery_id: str, *, at: float, attempt: int | None = None
    ) -> None:
        await self.set_delivery_state(
            delivery_id,
            DeliveryState.DONE,
            error=None,
            next_attempt_at=None,
            at=at,
            attempt=attempt,
        )

    async def retry_delivery(
        self,
        delivery_id: str,
        *,
        error: str,
        next_attempt_at: float,
        at: float,
        attempt: int | None = None,
    ) -> None:
        await self.set_delivery_state(
            delivery_id,
            DeliveryState.PENDING,
            error=error,
            next_attempt_at=next_attempt_at,
            at=at,
            attempt=attempt,
        )

    async def kill_delivery(
        self, delivery_id: str, *, error: str, at: float, attempt: int | None = None
    ) -> None:
        """Mark a delivery dead: no more attempts."""
        await self.set_delivery_state(
            delivery_id,
            DeliveryState.DEAD,
            error=error,
            next_attempt_at=None,
            at=at,
            attempt=attempt,
        )

    @abc.abstractmethod
    async def set_delivery_state(
        self,
        delivery_id: str,
        state: DeliveryState,
        *,
        error: str | None,
        next_attempt_at: float | None,
        at: float,
        attempt: int | None,
    ) -> None:
        """Unlease a delivery into `state`; a given error and due time replace the old ones."""

    @abc.abstractmethod
    async def release_delivery(
        self, delivery_id: str, *, at: float, attempt: int | None = None
    ) -> None:
        """Give a claimed delivery back, due at `at`, its attempt not counted (cut by shutdown)."""

    @abc.abstractmethod
    async def renew_lease(
        self, delivery_id: str, *, lease_until: float, attempt: int | None = None
    ) -> bool:
        """Extend a running delivery's lease; False if it is no longer running (as `attempt`)."""

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

    @abc.abstractmethod
    async def replay_deliveries(
        self,
        *,
        delivery_id: str | None = None,
        job_id: str | None = None,
        handler: str | None = None,
        states: frozenset[DeliveryState] = frozenset({DeliveryState.DEAD}),
        at: float,
    ) -> list[Delivery]:
        """Put finished deliveries matching every filter back to pending, due at `at`.

        Only deliveries in `states` (dead, done or both) move; pending and running ones are
        left alone. Each keeps its id, so the handler sees the same idempotency key, and its
        attempts start from zero again. Returns the deliveries as they are now, oldest first.
        The same transaction adds their number to `replay_count`.
        """

    @abc.abstractmethod
    async def delivery_summary(self) -> DeliverySummary:
        """Counts of deliveries by state and the creation time of the oldest pending one."""

    @abc.abstractmethod
    async def replay_count(self) -> int:
        """How many deliveries replays ever put back to pending, by every process.

        `replay_deliveries` adds to it in the transaction of the replay, so a `receiver
        replay` run on the database counts as one through a receiver's API does.
        """

    @abc.abstractmethod
    async def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status, every status named (read from the status index)."""

    # Polls

    @abc.abstractmethod
    async def claim_polls(
        self, *, limit: int, lease: float, at: float, worker: str | None = None
    ) -> list[Job]:
        """Jobs whose poll is due; their next poll is pushed back by `lease` while it runs.

        `worker` stamps the polls as `claim_deliveries` stamps deliveries; the next
        schedule of a job's poll (`schedule_poll`, `record` with `next_poll_at`) clears it.
        """

    @abc.abstractmethod
    async def schedule_poll(self, job_id: str, at: float | None, *, attempted: bool) -> None: ...

    @abc.abstractmethod
    async def next_poll_at(self) -> float | None: ...

    # Dashboard sessions

    @abc.abstractmethod
    async def create_session(self, key: str, *, at: float, expires_at: float) -> None:
        """Keep a session by its keyed digest until `expires_at`; those expired by `at` go."""

    @abc.abstractmethod
    async def session_alive(self, key: str, *, at: float) -> bool:
        """Whether a session with this key exists and has not expired by `at`."""

    @abc.abstractmethod
    async def delete_session(self, key: str) -> None:
        """End a session (logout); deleting an unknown one is not an error."""

    @abc.abstractmethod
    async def schedule_unscheduled_polls(self, provider: str, *, deadline: float) -> int:
        """Schedule a poll at `updated_at + deadline` for each open job of `provider` that has a
        task id and no poll scheduled; return how many. Heals jobs left open while we were down."""

    # Workers: heartbeats, so a dead process's leased work is taken over in seconds

    @abc.abstractmethod
    async def register_worker(self, worker: Worker) -> Worker:
        """Add (or bring back) `worker`'s row, beating now; the row as stored."""

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str) -> bool:
        """Stamp the worker's row with the time now; False if it is gone (declared dead)."""

    @abc.abstractmethod
    async def list_workers(self) -> list[Worker]:
        """Every registered worker, oldest first."""

    @abc.abstractmethod
    async def reap_workers(
        self, *, late: bool = True, dead: Sequence[str] = (), at: float
    ) -> Reaped:
        """Remove the workers in `dead` (known to have stopped) and, with `late`, those whose
        heartbeat is older than their `timeout`, and take back their leased work, in one
        transaction.

        Their running deliveries go back to pending, due as they were, their attempt
        counted (as a claim of a lapsed lease would count it): the dead runner's writes,
        fenced by that attempt, no longer apply. Their polls are due at `at`. Work stamped
        with a worker that has no row any more is taken back too.
        """

    # Retention

    @abc.abstractmethod
    async def prune(
        self, *, before: float, limit: int, dry_run: bool = False, jobs: bool = False
    ) -> dict[str, int]:
        """Delete one batch of what is past the retention; the rows deleted per table.

        A job's events (with their deliveries) and raw requests go when the row is older
        than `before` and the job ended (succeeded, failed, cancelled) and last changed
        before it, with no pending or running delivery: nothing of an open job, nor of
        one whose handlers still run, is touched. Quarantine rows, and requests of no
        job, go by their own age. With `jobs`, such ended jobs go too (their files'
        records with them) once nothing of theirs is left. At most `limit` events,
        requests, quarantine rows and jobs go per call, each table in its own short
        transaction. With `dry_run`, nothing is deleted and every row that would go
        is counted, without the limit.
        """

    async def reclaim(self, pages: int) -> int:
        """Give up to `pages` free pages of the database file back; how many stay free.

        Only SQLite keeps freed pages inside its file. PostgreSQL's autovacuum makes
        deleted rows reusable by itself: the default does nothing.
        """
        return 0
