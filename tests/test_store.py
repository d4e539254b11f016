"""Contract tests for the Store seam: every backend runs them through the `store` fixture."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import StoreUnavailable
from receiver.models import (
    Delivery,
    DeliveryState,
    Disposition,
    Event,
    Job,
    Quarantined,
    RawRequest,
    Status,
    Update,
)
from receiver.store import NewJob, SQLiteStore, Store
from receiver.store.base import AnswerNote, Claim, Router, TokenMatch, Worker, Write
from receiver.store.migrations import migrations

T0 = 1_000.0


def make_job(
    job_id: str = "job_1",
    *,
    provider: str = "apiframe",
    task_id: str | None = "task-1",
    status: Status = Status.QUEUED,
    at: float = T0,
    **fields: Any,
) -> Job:
    return Job(
        id=job_id,
        provider=provider,
        task_id=task_id,
        status=status,
        created_at=at,
        updated_at=at,
        **fields,
    )


async def add_job(store: Store, job_id: str = "job_1", **kwargs: Any) -> Job:
    token_hash = kwargs.pop("token_hash", None)
    secret_hash = kwargs.pop("secret_hash", None)
    next_poll_at = kwargs.pop("next_poll_at", None)
    job = make_job(job_id, **kwargs)
    await store.create_job(
        NewJob(job=job, token_hash=token_hash, secret_hash=secret_hash, next_poll_at=next_poll_at)
    )
    return job


def make_update(status: Status, progress: float | None = None, **fields: Any) -> Update:
    return Update(status=status, raw_status=f"raw-{status.value}", progress=progress, **fields)


def make_raw(request_id: str = "req_1", *, body: bytes = b'{"status": "running"}') -> RawRequest:
    return RawRequest(
        id=request_id,
        received_at=T0,
        provider="apiframe",
        method="POST",
        path="/hooks/apiframe/[token:abc]",
        query="",
        headers={"content-type": "application/json", "x-webhook-secret": "[redacted]"},
        body=body,
        client="203.0.113.9",
    )


def route_to(*handlers: str) -> Router:
    def route(event: Event, job: Job) -> Sequence[str]:
        return list(handlers)

    return route


class RecordingRoute:
    """A router that remembers what it was asked."""

    def __init__(self, *handlers: str) -> None:
        self.handlers = list(handlers)
        self.calls: list[tuple[Event, Job]] = []

    def __call__(self, event: Event, job: Job) -> Sequence[str]:
        self.calls.append((event, job))
        return self.handlers


async def record(
    store: Store,
    update: Update,
    *,
    job_id: str | None = "job_1",
    route: Router | None = None,
    at: float = T0 + 1,
    **kwargs: Any,
) -> Any:
    write = Write(update=update, source="callback", job_id=job_id, at=at, **kwargs)
    return await store.record(write, route=route or route_to("h"))


async def pending_delivery(store: Store, *, handlers: Sequence[str] = ("h",)) -> list[Delivery]:
    """A job with one applied event and a pending delivery per handler."""
    await add_job(store)
    recorded = await record(store, make_update(Status.RUNNING, 0.1), route=route_to(*handlers))
    return list(recorded.deliveries)


class TestJobs:
    """Jobs are stored as given and found by id, token, task and listing."""

    async def test_create_and_get(self, store: Store) -> None:
        """A created job reads back equal, metadata included."""
        job = await add_job(store, metadata={"user": "u1", "n": 3}, raw_status="submitted")
        assert job == await store.get_job("job_1")

    async def test_unknown_job_is_none(self, store: Store) -> None:
        """Asking for a job that does not exist gives None."""
        assert None is await store.get_job("job_missing")

    async def test_job_by_token(self, store: Store) -> None:
        """The token digest finds the job together with its secret digest."""
        job = await add_job(store, token_hash="tok-digest", secret_hash="sec-digest")
        found = await store.job_by_token("tok-digest")
        assert found is not None
        assert (job, "sec-digest") == (found.job, found.secret_hash)
        assert None is await store.job_by_token("other-digest")

    async def test_job_by_task(self, store: Store) -> None:
        """Provider and task id find the job; the same task id at another provider does not."""
        job = await add_job(store, task_id="t-42")
        assert job == await store.job_by_task("apiframe", "t-42")
        assert None is await store.job_by_task("rixapi", "t-42")

    async def test_set_task_id(self, store: Store) -> None:
        """A job submitted without a task id gets one when the provider answers."""
        await add_job(store, task_id=None)
        await store.set_task_id("job_1", "t-7", None)
        found = await store.job_by_task("apiframe", "t-7")
        assert found is not None
        assert "job_1" == found.id

    async def test_list_newest_first_with_filters(self, store: Store) -> None:
        """Listing is newest id first and filters by status, provider and task id."""
        await add_job(store, "job_a", task_id="t-a")
        await add_job(store, "job_b", task_id="t-b", provider="rixapi")
        await add_job(store, "job_c", task_id="t-c", status=Status.RUNNING)
        assert ["job_c", "job_b", "job_a"] == [j.id for j in (await store.list_jobs()).items]
        assert ["job_c"] == [j.id for j in (await store.list_jobs(status="running")).items]
        assert ["job_b"] == [j.id for j in (await store.list_jobs(provider="rixapi")).items]
        assert ["job_a"] == [j.id for j in (await store.list_jobs(task_id="t-a")).items]
        assert [] == (await store.list_jobs(status="failed")).items

    async def test_cursor_paging(self, store: Store) -> None:
        """Following `next` visits every job once, newest first, and ends with None."""
        for n in range(5):
            await add_job(store, f"job_{n}", task_id=f"t-{n}")
        seen, cursor, pages = [], None, 0
        while True:
            page = await store.list_jobs(limit=2, before=cursor)
            seen += [j.id for j in page.items]
            pages += 1
            if page.next is None:
                break
            cursor = page.next
        assert ["job_4", "job_3", "job_2", "job_1", "job_0"] == seen
        assert 3 == pages

    async def test_exactly_full_page_has_no_next(self, store: Store) -> None:
        """A page that holds the last job says there is nothing after it."""
        for n in range(2):
            await add_job(store, f"job_{n}", task_id=f"t-{n}")
        page = await store.list_jobs(limit=2)
        assert (2, None) == (len(page.items), page.next)


class TestRecord:
    """`record` commits raw request, event, job state and deliveries together, or nothing."""

    async def test_everything_is_written(self, store: Store) -> None:
        """One call stores the request, the event, the new job state and a delivery per handler."""
        await add_job(store)
        raw = make_raw()
        update = make_update(Status.RUNNING, 0.5, task_id="task-1", payload={"p": 50})
        recorded = await record(store, update, raw=raw, route=route_to("h1", "h2"))

        event = recorded.event
        assert (Status.RUNNING, 0.5, Disposition.APPLIED, "callback", "req_1") == (
            event.status,
            event.progress,
            event.disposition,
            event.source,
            event.request_id,
        )
        assert {"p": 50} == event.payload
        assert [event] == await store.list_events("job_1")
        assert [raw] == await store.list_requests("job_1")
        assert recorded.job == await store.get_job("job_1")
        assert (Status.RUNNING, 0.5) == (recorded.job.status, recorded.job.progress)
        stored = await store.list_deliveries(job_id="job_1")
        assert recorded.deliveries == stored
        assert ["h1", "h2"] == [d.handler for d in stored]
        for delivery in stored:
            assert (event.id, DeliveryState.PENDING, 0, T0 + 1) == (
                delivery.event_id,
                delivery.state,
                delivery.attempts,
                delivery.next_attempt_at,
            )

    async def test_router_sees_the_stored_event_and_the_job_after_it(self, store: Store) -> None:
        """Handlers are chosen from the event as stored and the job as it now is."""
        await add_job(store)
        route = RecordingRoute("h")
        recorded = await record(store, make_update(Status.SUCCEEDED), route=route)
        assert [(recorded.event, recorded.job)] == route.calls
        assert Status.SUCCEEDED == route.calls[0][1].status

    async def test_router_failure_leaves_nothing(self, store: Store) -> None:
        """If routing raises, no request, event or delivery is kept and the job is unchanged."""
        job = await add_job(store)

        def broken(event: Event, job: Job) -> Sequence[str]:
            raise RuntimeError("router broke")

        with pytest.raises(RuntimeError, match="router broke"):
            await record(store, make_update(Status.RUNNING, 0.5), raw=make_raw(), route=broken)
        assert [] == await store.list_events("job_1")
        assert [] == await store.list_requests("job_1")
        assert [] == await store.list_deliveries()
        assert job == await store.get_job("job_1")
        # The store is still usable after the rollback.
        recorded = await record(store, make_update(Status.RUNNING, 0.5), raw=make_raw())
        assert Disposition.APPLIED == recorded.event.disposition

    async def test_router_failure_does_not_create_the_new_job(self, store: Store) -> None:
        """A job created on the fly disappears with the failed transaction."""

        def broken(event: Event, job: Job) -> Sequence[str]:
            raise RuntimeError("router broke")

        with pytest.raises(RuntimeError):
            await record(
                store,
                make_update(Status.RUNNING, 0.5),
                job_id=None,
                new_job=NewJob(job=make_job(task_id="t-9")),
                route=broken,
            )
        assert None is await store.job_by_task("apiframe", "t-9")
        assert [] == (await store.list_jobs()).items

    async def test_duplicate_is_stored_and_fires_nothing(self, store: Store) -> None:
        """The same statement twice is kept twice, the second time as a duplicate."""
        await add_job(store)
        route = RecordingRoute("h")
        await record(store, make_update(Status.RUNNING, 0.5), route=route, raw=make_raw("req_1"))
        second = await record(
            store, make_update(Status.RUNNING, 0.5), route=route, raw=make_raw("req_2"), at=T0 + 2
        )
        assert (Disposition.DUPLICATE, []) == (second.event.disposition, second.deliveries)
        assert 1 == len(route.calls)
        assert [Disposition.APPLIED, Disposition.DUPLICATE] == [
            e.disposition for e in await store.list_events("job_1")
        ]
        assert 2 == len(await store.list_requests("job_1"))
        assert 1 == len(await store.list_deliveries())

    async def test_late_event_is_stored_and_fires_nothing(self, store: Store) -> None:
        """Older progress is kept as late and the job keeps its newer state."""
        await add_job(store)
        await record(store, make_update(Status.RUNNING, 0.5))
        late = await record(store, make_update(Status.RUNNING, 0.3), at=T0 + 2)
        assert (Disposition.LATE, []) == (late.event.disposition, late.deliveries)
        job = await store.get_job("job_1")
        assert job is not None
        assert 0.5 == job.progress
        assert 1 == len(await store.list_deliveries())

    async def test_event_after_terminal_is_late(self, store: Store) -> None:
        """Nothing moves a finished job or fires for it."""
        await add_job(store)
        await record(store, make_update(Status.SUCCEEDED, result_url="https://cdn.example/v"))
        late = await record(store, make_update(Status.FAILED, error="x"), at=T0 + 2)
        assert (Disposition.LATE, []) == (late.event.disposition, late.deliveries)
        job = await store.get_job("job_1")
        assert job is not None
        assert (Status.SUCCEEDED, "https://cdn.example/v") == (job.status, job.result_url)

    async def test_a_renewal_gives_a_succeeded_job_fresh_urls(self, store: Store) -> None:
        """A `renewal` statement with new links is stored as renewed, updates the job's URLs
        and fires nothing; the same statement from a callback moves nothing."""
        await add_job(store)
        old, new = "https://cdn.example/v?sig=1", "https://cdn.example/v?sig=2"
        await record(store, make_update(Status.SUCCEEDED, 1.0, result_url=old))
        fresh = make_update(Status.SUCCEEDED, 1.0, result_url=new, preview_url=new + "&p")
        ignored = await record(store, fresh, at=T0 + 2)
        renewed = await store.record(
            Write(update=fresh, source="renewal", job_id="job_1", at=T0 + 3), route=route_to("h")
        )
        assert (Disposition.DUPLICATE, Disposition.RENEWED, []) == (
            ignored.event.disposition,
            renewed.event.disposition,
            renewed.deliveries,
        )
        job = await store.get_job("job_1")
        assert job is not None
        assert (Status.SUCCEEDED, new, new + "&p", T0 + 3) == (
            job.status,
            job.result_url,
            job.preview_url,
            job.updated_at,
        )
        assert 1 == len(await store.list_deliveries())

    async def test_new_job_is_created_once(self, store: Store) -> None:
        """Without a job id the job is found by provider and task id, and created only if absent."""
        first = await record(
            store,
            make_update(Status.RUNNING, 0.2),
            job_id=None,
            new_job=NewJob(job=make_job("job_new", task_id="t-9")),
        )
        second = await record(
            store,
            make_update(Status.RUNNING, 0.4),
            job_id=None,
            new_job=NewJob(job=make_job("job_other", task_id="t-9")),
            at=T0 + 2,
        )
        assert ("job_new", "job_new") == (first.job.id, second.job.id)
        assert ["job_new"] == [j.id for j in (await store.list_jobs()).items]
        assert 2 == len(await store.list_events("job_new"))
        job = await store.get_job("job_new")
        assert job is not None
        assert 0.4 == job.progress

    async def test_record_reschedules_and_terminal_clears_the_poll(self, store: Store) -> None:
        """A non-terminal update moves the next poll; a terminal one cancels it."""
        await add_job(store)
        await record(store, make_update(Status.RUNNING, 0.2), next_poll_at=T0 + 50)
        assert T0 + 50 == await store.next_poll_at()
        await record(store, make_update(Status.SUCCEEDED), next_poll_at=T0 + 60, at=T0 + 2)
        assert None is await store.next_poll_at()


class TestRecordByToken:
    """A job's own URL: the job looked up by its token hash and recorded in one go, or
    nothing at all written when there is no such job or the check refuses it."""

    async def test_accepted_is_recorded_for_that_job(self, store: Store) -> None:
        await add_job(store, token_hash="tok-digest", secret_hash="sec-digest")
        seen: list[tuple[str, str | None]] = []

        def accept(match: TokenMatch) -> bool:
            seen.append((match.job.id, match.secret_hash))
            return True

        recorded = await store.record_by_token(
            "tok-digest",
            accept,
            Write(update=make_update(Status.RUNNING, 0.3), source="callback", raw=make_raw()),
            route=route_to("h"),
        )
        assert recorded is not None
        assert [("job_1", "sec-digest")] == seen
        assert ("job_1", Status.RUNNING) == (recorded.job.id, recorded.job.status)
        assert ["h"] == [d.handler for d in recorded.deliveries]
        assert [recorded.event.id] == [e.id for e in await store.list_events("job_1")]
        assert ["req_1"] == [r.id for r in await store.list_requests("job_1")]

    @pytest.mark.parametrize("token", ["no-such-token", "tok-digest"])
    async def test_unknown_or_refused_writes_nothing(self, store: Store, token: str) -> None:
        await add_job(store, token_hash="tok-digest", secret_hash="sec-digest")
        recorded = await store.record_by_token(
            token,
            lambda match: False,
            Write(update=make_update(Status.SUCCEEDED), source="callback", raw=make_raw()),
            route=route_to("h"),
        )
        assert recorded is None
        assert [] == await store.list_events("job_1")
        assert [] == await store.list_requests("job_1")
        assert [] == await store.list_deliveries()
        job = await store.get_job("job_1")
        assert job is not None and Status.QUEUED is job.status

    async def test_a_nudge_accepted_is_kept_and_schedules_the_poll(self, store: Store) -> None:
        await add_job(store, token_hash="tok-digest", secret_hash="sec-digest")
        seen: list[str] = []

        def accept(match: TokenMatch) -> bool:
            seen.append(match.job.id)
            return True

        job = await store.record_nudge_by_token("tok-digest", accept, make_raw(), poll_at=T0 + 5)
        assert ["job_1"] == seen
        assert job is not None and "job_1" == job.id
        assert [make_raw()] == await store.list_requests("job_1")
        assert T0 + 5 == await store.next_poll_at()

    @pytest.mark.parametrize("token", ["no-such-token", "tok-digest"])
    async def test_a_nudge_unknown_or_refused_writes_nothing(
        self, store: Store, token: str
    ) -> None:
        await add_job(store, token_hash="tok-digest", secret_hash="sec-digest")
        job = await store.record_nudge_by_token(
            token, lambda match: False, make_raw(), poll_at=T0 + 5
        )
        assert job is None
        assert [] == await store.list_requests("job_1")
        assert None is await store.next_poll_at()


class TestNudges:
    """A nudge keeps its raw request and schedules a poll only for a job still in progress."""

    async def test_nudge_schedules_a_poll(self, store: Store) -> None:
        """A nudge for a running job is kept and brings its poll forward."""
        await add_job(store)
        await store.record_nudge("job_1", make_raw(), poll_at=T0 + 5)
        assert [make_raw()] == await store.list_requests("job_1")
        assert T0 + 5 == await store.next_poll_at()
        assert ["job_1"] == [j.id for j in await store.claim_polls(limit=5, lease=60, at=T0 + 5)]

    async def test_nudge_for_a_finished_job_polls_nothing(self, store: Store) -> None:
        """A nudge for a terminal job is kept for diagnosis but schedules nothing."""
        await add_job(store, status=Status.SUCCEEDED)
        await store.record_nudge("job_1", make_raw(), poll_at=T0 + 5)
        assert [make_raw()] == await store.list_requests("job_1")
        assert None is await store.next_poll_at()
        assert [] == await store.claim_polls(limit=5, lease=60, at=T0 + 5)

    async def test_nudge_before_the_task_id_is_polled_once_it_comes(self, store: Store) -> None:
        """A nudge kept before the create call answered makes the job due when its id is set."""
        await add_job(store, task_id=None)
        await store.record_nudge("job_1", make_raw(), poll_at=T0 + 5)
        await store.set_task_id("job_1", "t-7", T0 + 900)
        assert T0 + 5 == await store.next_poll_at()
        [job] = await store.claim_polls(limit=5, lease=60, at=T0 + 5)
        assert ("job_1", "t-7") == (job.id, job.task_id)

    async def test_set_task_id_schedules_its_poll_when_none_is_due(self, store: Store) -> None:
        """Without an earlier poll, the job's first poll is the one set_task_id names."""
        await add_job(store, task_id=None)
        await store.set_task_id("job_1", "t-7", T0 + 900)
        assert T0 + 900 == await store.next_poll_at()


class TestAnswers:
    """Our answers to stored requests are written in one batch, onto the rows that exist."""

    async def test_batch_sets_status_and_latency_of_each_request(self, store: Store) -> None:
        """Each stored request reads back with its own answer; one not yet noted has none."""
        await add_job(store)
        for request_id in ("req_1", "req_2", "req_3"):
            await store.record_nudge("job_1", make_raw(request_id), poll_at=T0 + 5)
        await store.save_answers([AnswerNote("req_1", 200, 3.25), AnswerNote("req_2", 202, 0.5)])
        answers = [
            (raw.id, raw.answer_status, raw.answer_ms) for raw in await store.list_requests("job_1")
        ]
        assert [("req_1", 200, 3.25), ("req_2", 202, 0.5), ("req_3", None, None)] == answers

    async def test_an_answer_without_a_stored_request_adds_nothing(self, store: Store) -> None:
        """A 503 whose write failed has no row: its note makes none, and the batch still lands."""
        await add_job(store)
        await store.record_nudge("job_1", make_raw("req_1"), poll_at=T0 + 5)
        await store.save_answers([AnswerNote("req_gone", 503, 1.0), AnswerNote("req_1", 200, 2.0)])
        await store.save_answers([])
        [raw] = await store.list_requests("job_1")
        assert ("req_1", 200, 2.0) == (raw.id, raw.answer_status, raw.answer_ms)


def make_quarantined(n: int) -> Quarantined:
    return Quarantined(
        id=f"qua_{n:03d}",
        received_at=T0 + n,
        provider="apiframe",
        reason="unknown_token",
        status_code=404,
        method="POST",
        path="/hooks/apiframe/[token:abc]",
        query="",
        headers={},
        body=b"",
    )


class TestQuarantine:
    """Rejected requests are kept as given and listed newest first."""

    async def test_round_trip(self, store: Store) -> None:
        """A quarantined entry reads back equal, bytes body included."""
        entries = [
            Quarantined(
                id=f"qua_{n}",
                received_at=T0 + n,
                provider="apiframe",
                reason="bad secret",
                status_code=401,
                method="POST",
                path="/hooks/apiframe/[token:abc]",
                query="uuid=1",
                headers={"x-webhook-secret": "[redacted]"},
                body=b"\x00\xffnot json",
                client=None,
            )
            for n in range(3)
        ]
        for entry in entries:
            await store.quarantine(entry)
        assert list(reversed(entries)) == await store.list_quarantine()
        assert [entries[2]] == await store.list_quarantine(limit=1)

    async def test_trim_keeps_the_newest_a_batch_at_a_time(self, store: Store) -> None:
        """Trimming deletes the oldest entries past `keep`, never more than `batch` a call."""
        for n in range(30):
            await store.quarantine(make_quarantined(n))
        deleted = [await store.trim_quarantine(keep=10, batch=8) for _ in range(4)]
        assert [8, 8, 4, 0] == deleted
        kept = [entry.id for entry in await store.list_quarantine(limit=100)]
        assert [f"qua_{n:03d}" for n in reversed(range(20, 30))] == kept

    async def test_trim_under_the_cap_deletes_nothing(self, store: Store) -> None:
        """A table at or under `keep` rows is left as it is, an empty one too."""
        assert 0 == await store.trim_quarantine(keep=3, batch=100)
        for n in range(3):
            await store.quarantine(make_quarantined(n))
        assert 0 == await store.trim_quarantine(keep=3, batch=100)
        assert 3 == len(await store.list_quarantine())


class TestClaimOnRecord:
    """Deliveries the recording process has room for are stored claimed by it, as a claim
    would leave them, behind any unfinished delivery of the same job and handler."""

    async def _claiming(
        self, store: Store, update: Update, *, route: Router, at: float = T0 + 1
    ) -> list[Delivery]:
        write = Write(update=update, source="callback", job_id="job_1", at=at)
        claim = Claim(most=2, lease=30.0, worker="w1")
        recorded = await store.record(write, route=route, claim=claim)
        return list(recorded.deliveries)

    async def test_stored_running_leased_and_stamped_with_the_worker(self, store: Store) -> None:
        """Running, attempt 1, leased; no one else claims it, and when its worker is
        declared dead it is taken back like any delivery that worker claimed."""
        await store.register_worker(Worker(id="w1", host="h", pid=1, pid_scope="", timeout=15))
        await add_job(store)
        [delivery] = await self._claiming(
            store, make_update(Status.RUNNING, 0.1), route=route_to("h")
        )
        assert (DeliveryState.RUNNING, 1, T0 + 31) == (
            delivery.state,
            delivery.attempts,
            delivery.lease_until,
        )
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 2)
        reaped = await store.reap_workers(late=False, dead=["w1"], at=T0 + 3)
        assert 1 == reaped.deliveries
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 4)
        assert delivery.id == claimed.delivery.id

    async def test_an_unfinished_delivery_of_the_handler_is_not_overtaken(
        self, store: Store
    ) -> None:
        """The job's pending delivery to h1 keeps the new one to h1 pending; h2 is claimed."""
        await add_job(store)
        await record(store, make_update(Status.RUNNING, 0.1), route=route_to("h1"))
        deliveries = await self._claiming(
            store, make_update(Status.RUNNING, 0.2), route=route_to("h1", "h2"), at=T0 + 2
        )
        assert [("h1", DeliveryState.PENDING), ("h2", DeliveryState.RUNNING)] == [
            (d.handler, d.state) for d in deliveries
        ]

    async def test_of_two_writes_committed_together_only_the_first_claims(
        self, store: Store
    ) -> None:
        """Two callbacks of one job in one batch: the second's delivery waits for the first."""
        await add_job(store)
        first, second = await asyncio.gather(
            self._claiming(store, make_update(Status.RUNNING, 0.1), route=route_to("h")),
            self._claiming(store, make_update(Status.RUNNING, 0.2), route=route_to("h"), at=T0 + 2),
        )
        assert [DeliveryState.RUNNING] == [d.state for d in first]
        assert [DeliveryState.PENDING] == [d.state for d in second]


class TestClaimDeliveries:
    """Due deliveries are leased; a lease keeps others away until it expires."""

    async def test_claim_leases_the_delivery(self, store: Store) -> None:
        """A claimed delivery is running, counts an attempt and comes with its event and job."""
        [delivery] = await pending_delivery(store)
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        assert delivery.id == claimed.delivery.id
        assert (DeliveryState.RUNNING, 1, T0 + 61) == (
            claimed.delivery.state,
            claimed.delivery.attempts,
            claimed.delivery.lease_until,
        )
        assert delivery.event_id == claimed.event.id
        assert await store.get_job("job_1") == claimed.job

    async def test_leased_delivery_is_not_claimed_again(self, store: Store) -> None:
        """While the lease lasts nobody else gets the delivery."""
        await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 30)

    async def test_expired_lease_is_reclaimed(self, store: Store) -> None:
        """A runner that died loses its lease and the delivery runs again."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        [again] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 62)
        assert (delivery.id, 2) == (again.delivery.id, again.delivery.attempts)

    async def test_not_yet_due_is_not_claimed(self, store: Store) -> None:
        """A delivery waits for its next attempt time."""
        await pending_delivery(store)
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0)

    async def test_limit_and_oldest_first(self, store: Store) -> None:
        """At most `limit` are claimed, the earliest due first."""
        for n in range(3):
            await add_job(store, f"job_{n}", task_id=f"t-{n}")
            await record(store, make_update(Status.RUNNING, 0.1), job_id=f"job_{n}", at=T0 + n)
        claimed = await store.claim_deliveries(limit=2, lease=60, at=T0 + 10)
        assert ["job_0", "job_1"] == [c.job.id for c in claimed]


class TestDeliveryOrder:
    """A job's deliveries to one handler run one at a time, in event order."""

    async def _two_events(self, store: Store, job_id: str = "job_1") -> list[Delivery]:
        await record(store, make_update(Status.RUNNING, 0.1), job_id=job_id, route=route_to("h"))
        await record(
            store, make_update(Status.RUNNING, 0.2), job_id=job_id, route=route_to("h"), at=T0 + 2
        )
        return await store.list_deliveries(job_id=job_id)

    async def test_second_waits_while_first_is_pending_or_running(self, store: Store) -> None:
        """The later delivery is not claimable until the earlier one finishes."""
        await add_job(store)
        first, second = await self._two_events(store)
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 5)
        assert first.id == claimed.delivery.id
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 6)
        await store.retry_delivery(first.id, error="boom", next_attempt_at=T0 + 20, at=T0 + 7)
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 8)
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 20)
        assert first.id == claimed.delivery.id
        await store.finish_delivery(first.id, at=T0 + 21)
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 22)
        assert second.id == claimed.delivery.id

    async def test_dead_first_unblocks_the_second(self, store: Store) -> None:
        """A delivery given up on no longer holds the queue."""
        await add_job(store)
        first, second = await self._two_events(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 5)
        await store.kill_delivery(first.id, error="gave up", at=T0 + 6)
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 7)
        assert second.id == claimed.delivery.id

    async def test_other_handler_and_other_job_are_not_blocked(self, store: Store) -> None:
        """Only the same job and the same handler wait; everything else runs."""
        await add_job(store, "job_a", task_id="t-a")
        await add_job(store, "job_b", task_id="t-b")
        both = route_to("h1", "h2")
        await record(store, make_update(Status.RUNNING, 0.1), job_id="job_a", route=both)
        await record(store, make_update(Status.RUNNING, 0.2), job_id="job_a", route=both, at=T0 + 2)
        await record(store, make_update(Status.RUNNING, 0.1), job_id="job_b", route=both, at=T0 + 3)
        claimed = await store.claim_deliveries(limit=10, lease=60, at=T0 + 5)
        got = sorted((c.job.id, c.delivery.handler, c.event.progress) for c in claimed)
        assert [
            ("job_a", "h1", 0.1),
            ("job_a", "h2", 0.1),
            ("job_b", "h1", 0.1),
            ("job_b", "h2", 0.1),
        ] == got


class TestDeliveryStates:
    """Finish, retry, kill and release move a delivery between its states."""

    async def test_finish(self, store: Store) -> None:
        """A finished delivery is done, unleased and never claimed again."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.finish_delivery(delivery.id, at=T0 + 2)
        [done] = await store.list_deliveries()
        assert (DeliveryState.DONE, None, 1) == (done.state, done.lease_until, done.attempts)
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 1_000)

    async def test_a_stale_runner_cannot_touch_a_reclaimed_delivery(self, store: Store) -> None:
        """After a lease ran out and another runner claimed the delivery, the first runner's
        finish, retry, kill, release and renew (fenced by its attempt number) change nothing."""
        [delivery] = await pending_delivery(store)
        [first] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        [second] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 100)
        stale = first.delivery.attempts
        assert stale + 1 == second.delivery.attempts
        await store.finish_delivery(delivery.id, at=T0 + 101, attempt=stale)
        await store.kill_delivery(delivery.id, error="old", at=T0 + 101, attempt=stale)
        await store.retry_delivery(
            delivery.id, error="old", next_attempt_at=T0 + 102, at=T0 + 101, attempt=stale
        )
        await store.release_delivery(delivery.id, at=T0 + 101, attempt=stale)
        assert not await store.renew_lease(delivery.id, lease_until=T0 + 999, attempt=stale)
        [running] = await store.list_deliveries()
        assert (DeliveryState.RUNNING, second.delivery.attempts, T0 + 160, None) == (
            running.state,
            running.attempts,
            running.lease_until,
            running.last_error,
        )
        await store.finish_delivery(delivery.id, at=T0 + 110, attempt=second.delivery.attempts)
        [done] = await store.list_deliveries()
        assert DeliveryState.DONE == done.state

    async def test_release_gives_the_attempt_back(self, store: Store) -> None:
        """A delivery released at shutdown is pending, due when asked, its attempt uncounted."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.release_delivery(delivery.id, at=T0 + 5)
        [released] = await store.list_deliveries()
        assert (DeliveryState.PENDING, 0, None, T0 + 5) == (
            released.state,
            released.attempts,
            released.lease_until,
            released.next_attempt_at,
        )
        [again] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 5)
        assert 1 == again.delivery.attempts

    async def test_release_leaves_finished_deliveries_alone(self, store: Store) -> None:
        """Only a running delivery can be released."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.finish_delivery(delivery.id, at=T0 + 2)
        await store.release_delivery(delivery.id, at=T0 + 5)
        [done] = await store.list_deliveries()
        assert DeliveryState.DONE == done.state

    async def test_renew_lease(self, store: Store) -> None:
        """A renewed lease keeps others away past the first one; a finished one is not renewed."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        assert await store.renew_lease(delivery.id, lease_until=T0 + 200)
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 100)
        await store.finish_delivery(delivery.id, at=T0 + 150)
        assert not await store.renew_lease(delivery.id, lease_until=T0 + 300)

    async def test_retry(self, store: Store) -> None:
        """A retried delivery is pending again at its next attempt time with its error kept."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.retry_delivery(delivery.id, error="boom", next_attempt_at=T0 + 9, at=T0 + 2)
        [retried] = await store.list_deliveries()
        assert (DeliveryState.PENDING, "boom", T0 + 9, None) == (
            retried.state,
            retried.last_error,
            retried.next_attempt_at,
            retried.lease_until,
        )
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 8)
        [again] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 9)
        assert 2 == again.delivery.attempts

    async def test_kill(self, store: Store) -> None:
        """A dead delivery keeps its last error and is never claimed again."""
        [delivery] = await pending_delivery(store)
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.kill_delivery(delivery.id, error="gave up", at=T0 + 2)
        assert [delivery.id] == [
            d.id for d in await store.list_deliveries(state=DeliveryState.DEAD)
        ]
        [dead] = await store.list_deliveries()
        assert "gave up" == dead.last_error
        assert [] == await store.claim_deliveries(limit=10, lease=60, at=T0 + 1_000)

    async def test_release_running(self, store: Store) -> None:
        """Releasing puts running deliveries back to pending, due at once."""
        deliveries = await pending_delivery(store, handlers=("h1", "h2"))
        await store.claim_deliveries(limit=1, lease=600, at=T0 + 1)
        assert 1 == await store.release_running()
        assert [DeliveryState.PENDING, DeliveryState.PENDING] == [
            d.state for d in await store.list_deliveries()
        ]
        claimed = await store.claim_deliveries(limit=10, lease=600, at=T0 + 2)
        assert {d.id for d in deliveries} == {c.delivery.id for c in claimed}
        assert 2 == await store.release_running()

    async def test_list_deliveries_filters(self, store: Store) -> None:
        """Deliveries are listed by job and by state."""
        await pending_delivery(store, handlers=("h1", "h2"))
        await add_job(store, "job_2", task_id="t-2")
        await record(store, make_update(Status.RUNNING, 0.1), job_id="job_2")
        assert 2 == len(await store.list_deliveries(job_id="job_1"))
        assert 1 == len(await store.list_deliveries(job_id="job_2"))
        assert 3 == len(await store.list_deliveries(state=DeliveryState.PENDING))
        assert [] == await store.list_deliveries(state=DeliveryState.DONE)


class TestReplayDeliveries:
    """Replay puts finished deliveries back to pending under the same id, attempts cleared."""

    async def _dead_and_done(self, store: Store) -> list[Delivery]:
        """Job 1 with handler h1 dead and h2 done; job 2 with h1 dead."""
        first, second = await pending_delivery(store, handlers=("h1", "h2"))
        await add_job(store, "job_2", task_id="t-2")
        [third] = (
            await record(
                store, make_update(Status.RUNNING, 0.1), job_id="job_2", route=route_to("h1")
            )
        ).deliveries
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        await store.kill_delivery(first.id, error="gave up", at=T0 + 2)
        await store.finish_delivery(second.id, at=T0 + 2)
        await store.kill_delivery(third.id, error="gave up", at=T0 + 2)
        return [first, second, third]

    async def test_replay_by_id_resets_the_same_delivery(self, store: Store) -> None:
        """The replayed delivery keeps its id, is pending and due now, with no attempts."""
        first, _, _ = await self._dead_and_done(store)
        [replayed] = await store.replay_deliveries(delivery_id=first.id, at=T0 + 50)
        assert (first.id, DeliveryState.PENDING, 0, T0 + 50) == (
            replayed.id,
            replayed.state,
            replayed.attempts,
            replayed.next_attempt_at,
        )
        [claimed] = await store.claim_deliveries(limit=10, lease=60, at=T0 + 50)
        assert (first.id, 1) == (claimed.delivery.id, claimed.delivery.attempts)

    async def test_done_deliveries_move_only_when_asked(self, store: Store) -> None:
        """A done delivery is left alone by a dead-only replay and replayed when named."""
        _, second, _ = await self._dead_and_done(store)
        assert [] == await store.replay_deliveries(delivery_id=second.id, at=T0 + 50)
        both = frozenset({DeliveryState.DEAD, DeliveryState.DONE})
        [replayed] = await store.replay_deliveries(delivery_id=second.id, states=both, at=T0 + 50)
        assert (second.id, DeliveryState.PENDING) == (replayed.id, replayed.state)

    async def test_filters_by_job_and_handler(self, store: Store) -> None:
        """Job and handler filters pick only the matching dead deliveries; no filter takes all."""
        first, _, third = await self._dead_and_done(store)
        assert [third.id] == [d.id for d in await store.replay_deliveries(job_id="job_2", at=T0)]
        assert [first.id] == [d.id for d in await store.replay_deliveries(handler="h1", at=T0)]
        assert [] == await store.replay_deliveries(at=T0)

    async def test_all_dead(self, store: Store) -> None:
        """With no filter every dead delivery is replayed, oldest first, and none stays dead."""
        first, _, third = await self._dead_and_done(store)
        assert [first.id, third.id] == [d.id for d in await store.replay_deliveries(at=T0)]
        assert [] == await store.list_deliveries(state=DeliveryState.DEAD)

    async def test_replays_are_counted_by_the_store(self, store: Store) -> None:
        """Each delivery a replay moves adds one to the store's count; a replay of nothing, none."""
        first, second, _ = await self._dead_and_done(store)
        assert 0 == await store.replay_count()
        await store.replay_deliveries(at=T0 + 50)  # the two dead ones
        await store.replay_deliveries(delivery_id=second.id, at=T0 + 50)  # done: not moved
        assert 2 == await store.replay_count()
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 50)
        await store.kill_delivery(first.id, error="again", at=T0 + 51)
        await store.replay_deliveries(delivery_id=first.id, at=T0 + 52)
        assert 3 == await store.replay_count()

    async def test_running_and_pending_are_never_touched(self, store: Store) -> None:
        """A delivery that is pending or running is not replayed, whatever the states asked."""
        await pending_delivery(store, handlers=("h1", "h2"))
        await store.claim_deliveries(limit=1, lease=60, at=T0 + 1)
        everything = frozenset(DeliveryState)
        assert [] == await store.replay_deliveries(states=everything, at=T0 + 5)
        assert {DeliveryState.RUNNING, DeliveryState.PENDING} == {
            d.state for d in await store.list_deliveries()
        }


class TestDeliverySummary:
    """The summary counts deliveries by state and dates the oldest pending one."""

    async def test_empty(self, store: Store) -> None:
        """An empty store counts zero in every state and has no oldest pending delivery."""
        summary = await store.delivery_summary()
        assert ({s.value: 0 for s in DeliveryState}, None) == (
            summary.counts,
            summary.oldest_pending_at,
        )

    async def test_counts_and_oldest(self, store: Store) -> None:
        """Counts follow the states; the oldest pending delivery's creation time is reported."""
        first, _second = await pending_delivery(store, handlers=("h1", "h2"))
        await add_job(store, "job_2", task_id="t-2")
        await record(store, make_update(Status.RUNNING, 0.1), job_id="job_2", at=T0 + 30)
        await store.claim_deliveries(limit=1, lease=60, at=T0 + 1)
        await store.kill_delivery(first.id, error="x", at=T0 + 2)
        summary = await store.delivery_summary()
        assert {"pending": 2, "running": 0, "done": 0, "dead": 1} == summary.counts
        assert T0 + 1 == summary.oldest_pending_at


class TestJobCounts:
    """`job_counts` names every status, with how many jobs are in it."""

    async def test_counts_by_status(self, store: Store) -> None:
        """Zero for a status with no job; a job moved on is counted where it is now."""
        assert {s.value: 0 for s in Status} == await store.job_counts()
        await add_job(store, "job_1")
        await add_job(store, "job_2", task_id="t-2")
        await record(store, make_update(Status.SUCCEEDED, 1.0), job_id="job_2", at=T0 + 30)
        expected = {s.value: 0 for s in Status} | {"queued": 1, "succeeded": 1}
        assert expected == await store.job_counts()


class TestNextDeliveryAt:
    """`next_delivery_at` says when the earliest claimable delivery or lease expiry falls due."""

    async def test_none_when_nothing_is_pending(self, store: Store) -> None:
        """An empty store has nothing due."""
        assert None is await store.next_delivery_at()

    async def test_earliest_pending(self, store: Store) -> None:
        """Pending deliveries and running leases count; the earliest wins."""
        first, second = await pending_delivery(store, handlers=("h1", "h2"))
        assert T0 + 1 == await store.next_delivery_at()
        await store.claim_deliveries(limit=10, lease=60, at=T0 + 1)
        # Running deliveries become claimable again when their lease runs out.
        assert T0 + 1 + 60 == await store.next_delivery_at()
        await store.retry_delivery(first.id, error="x", next_attempt_at=T0 + 30, at=T0 + 2)
        await store.retry_delivery(second.id, error="x", next_attempt_at=T0 + 20, at=T0 + 2)
        assert T0 + 20 == await store.next_delivery_at()
        await store.finish_delivery(second.id, at=T0 + 3)
        assert T0 + 30 == await store.next_delivery_at()


class TestPolls:
    """Polls are leased like deliveries and only for jobs that can still change."""

    async def test_due_polls_are_claimed_and_pushed_back(self, store: Store) -> None:
        """A claimed poll is not claimed again until its lease passes."""
        await add_job(store, next_poll_at=T0 + 10)
        assert [] == await store.claim_polls(limit=5, lease=60, at=T0 + 9)
        assert ["job_1"] == [j.id for j in await store.claim_polls(limit=5, lease=60, at=T0 + 10)]
        assert [] == await store.claim_polls(limit=5, lease=60, at=T0 + 11)
        assert T0 + 70 == await store.next_poll_at()
        assert ["job_1"] == [j.id for j in await store.claim_polls(limit=5, lease=60, at=T0 + 70)]

    async def test_terminal_and_taskless_jobs_are_not_polled(self, store: Store) -> None:
        """A finished job, or one the provider has not named yet, is never claimed."""
        await add_job(store, "job_done", task_id="t-1", status=Status.FAILED, next_poll_at=T0)
        await add_job(store, "job_new", task_id=None, next_poll_at=T0)
        await add_job(store, "job_run", task_id="t-3", status=Status.RUNNING, next_poll_at=T0)
        assert ["job_run"] == [j.id for j in await store.claim_polls(limit=5, lease=60, at=T0)]

    async def test_claim_limit_earliest_first(self, store: Store) -> None:
        """At most `limit` polls are claimed, the earliest due first."""
        for n in (3, 1, 2):
            await add_job(store, f"job_{n}", task_id=f"t-{n}", next_poll_at=T0 + n)
        claimed = await store.claim_polls(limit=2, lease=60, at=T0 + 10)
        assert ["job_1", "job_2"] == [j.id for j in claimed]

    async def test_schedule_poll(self, store: Store) -> None:
        """Scheduling sets the next poll; None cancels it."""
        await add_job(store)
        assert None is await store.next_poll_at()
        await store.schedule_poll("job_1", T0 + 40, attempted=True)
        assert T0 + 40 == await store.next_poll_at()
        await store.schedule_poll("job_1", None, attempted=False)
        assert None is await store.next_poll_at()

    async def test_schedule_poll_ignores_finished_jobs(self, store: Store) -> None:
        """A terminal job is never given a poll."""
        await add_job(store, status=Status.SUCCEEDED)
        await store.schedule_poll("job_1", T0 + 40, attempted=True)
        assert None is await store.next_poll_at()

    async def test_next_poll_at_is_the_earliest(self, store: Store) -> None:
        """The earliest scheduled poll of a job still in progress is reported."""
        await add_job(store, "job_a", task_id="t-a", next_poll_at=T0 + 30)
        await add_job(store, "job_b", task_id="t-b", next_poll_at=T0 + 20)
        await add_job(store, "job_c", task_id="t-c", status=Status.FAILED, next_poll_at=T0 + 5)
        assert T0 + 20 == await store.next_poll_at()

    async def test_next_poll_at_only_reports_claimable_polls(self, store: Store) -> None:
        """A poll claim_polls will never take is not reported as due, or the poller would spin."""
        await add_job(store, task_id=None)
        await store.record_nudge("job_1", make_raw(), poll_at=T0)
        assert [] == await store.claim_polls(limit=5, lease=60, at=T0 + 1)
        assert None is await store.next_poll_at()


class TestUnscheduledPolls:
    """Open jobs left with no poll get one at their last update plus the deadline."""

    async def test_only_open_unscheduled_jobs_of_the_provider(self, store: Store) -> None:
        """Scheduled, finished, taskless and other providers' jobs are left alone."""
        await add_job(store, "job_open", task_id="t-1", status=Status.RUNNING)
        await add_job(store, "job_sched", task_id="t-2", next_poll_at=T0 + 5)
        await add_job(store, "job_done", task_id="t-3", status=Status.SUCCEEDED)
        await add_job(store, "job_new", task_id=None)
        await add_job(store, "job_other", task_id="t-4", provider="rixapi")
        assert 1 == await store.schedule_unscheduled_polls("apiframe", deadline=100)
        assert T0 + 5 == await store.next_poll_at()
        claimed = await store.claim_polls(limit=5, lease=60, at=T0 + 100)
        assert ["job_open", "job_sched"] == sorted(j.id for j in claimed)
        assert 0 == await store.schedule_unscheduled_polls("apiframe", deadline=100)


class TestReopen:
    """Reopening the same database keeps everything and applies no migration twice."""

    async def test_reopen_keeps_data_and_schema(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        """A second open of the same database finds the job and can write again."""
        job = await add_job(store)
        await store.close()
        reopened = make_store()
        await reopened.open()
        try:
            assert job == await reopened.get_job("job_1")
            recorded = await record(reopened, make_update(Status.RUNNING, 0.1))
        finally:
            await reopened.close()
        again = make_store()
        await again.open()
        try:
            assert recorded.job == await again.get_job("job_1")
            assert [recorded.event] == await again.list_events("job_1")
        finally:
            await again.close()


# SQLite specifics: files, locks and the migrations table.


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "receiver.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(f"sqlite:///{db_path}", busy_timeout_ms=100)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def locker(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection that will hold an exclusive lock on the database file."""
    connection = sqlite3.connect(db_path, timeout=0.1, isolation_level=None)
    try:
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


async def threads_settled(before: int) -> None:
    """Wait (briefly) for aiosqlite's worker thread of a failed connect to finish.

    aiosqlite stops that thread without waiting for it; if the test's event loop closes
    first, the thread's last callback fails and pytest reports it against a later test.
    """
    for _ in range(100):
        if threading.active_count() <= before:
            return
        await asyncio.sleep(0.01)


class TestSQLiteUnavailable:
    """A SQLite file that cannot be opened or written raises StoreUnavailable, nothing rawer."""

    async def test_locked_file_refuses_writes(
        self, sqlite_store: SQLiteStore, locker: sqlite3.Connection
    ) -> None:
        """Writes wait out the busy timeout, then report the store unavailable."""
        await add_job(sqlite_store)
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await add_job(sqlite_store, "job_2", task_id="t-2")
        with pytest.raises(StoreUnavailable):
            await record(sqlite_store, make_update(Status.RUNNING, 0.1))
        with pytest.raises(StoreUnavailable):
            await sqlite_store.claim_deliveries(limit=1, lease=60, at=T0)

    async def test_store_recovers_when_the_lock_goes(
        self, sqlite_store: SQLiteStore, locker: sqlite3.Connection
    ) -> None:
        """Once the other writer lets go, the same store commits again."""
        await add_job(sqlite_store)
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await record(sqlite_store, make_update(Status.RUNNING, 0.1))
        locker.execute("ROLLBACK")
        recorded = await record(sqlite_store, make_update(Status.RUNNING, 0.1))
        assert Disposition.APPLIED == recorded.event.disposition
        assert 1 == len(await sqlite_store.list_events("job_1"))

    async def test_open_on_a_locked_new_file(
        self, db_path: Path, locker: sqlite3.Connection
    ) -> None:
        """A new database locked by someone else cannot be migrated: unavailable."""
        locker.execute("BEGIN EXCLUSIVE")
        store = SQLiteStore(f"sqlite:///{db_path}", busy_timeout_ms=100)
        before = threading.active_count()
        try:
            with pytest.raises(StoreUnavailable):
                await store.open()
        finally:
            await store.close()
            await threads_settled(before)

    @pytest.mark.parametrize(
        "where",
        [
            pytest.param(lambda tmp: tmp, id="a directory"),
            pytest.param(lambda tmp: tmp / "plain-file" / "receiver.db", id="below a regular file"),
        ],
    )
    async def test_open_where_no_database_can_be(
        self, tmp_path: Path, where: Callable[[Path], Path]
    ) -> None:
        """A directory, or a path whose folder cannot be made, is unavailable, not an OSError."""
        (tmp_path / "plain-file").write_text("not a folder")
        store = SQLiteStore(f"sqlite:///{where(tmp_path)}")
        before = threading.active_count()
        try:
            with pytest.raises(StoreUnavailable):
                await store.open()
        finally:
            await store.close()
            await threads_settled(before)

    async def test_closed_store(self, sqlite_store: SQLiteStore) -> None:
        """A store used after close says so."""
        await sqlite_store.close()
        with pytest.raises(StoreUnavailable):
            await sqlite_store.get_job("job_1")

    async def test_migrations_are_recorded_once(self, db_path: Path) -> None:
        """Opening the same file three times leaves one row per migration."""
        for _ in range(3):
            store = SQLiteStore(f"sqlite:///{db_path}")
            await store.open()
            await store.close()
        with sqlite3.connect(db_path) as connection:
            rows = connection.execute("SELECT version FROM schema_migrations").fetchall()
        connection.close()
        assert [(m.version,) for m in migrations("sqlite")] == sorted(rows)
