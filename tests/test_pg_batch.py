"""Group commit: the queue that batches concurrent writes, and PostgreSQL ingest in batches.

The PostgreSQL tests run concurrent `record` calls on a real server and check what each
caller got back against what the database holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import asyncpg
import msgspec
from test_store import add_job, make_job, make_raw, make_update, route_to

from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState, Disposition, Status, now
from receiver.store import NewJob
from receiver.store.base import Recorded, TokenMatch, Write
from receiver.store.batcher import GroupCommit, Outcome
from receiver.store.pg_batch import DeliveryWrite, write_rounds
from receiver.store.postgres import PostgresStore


class Counting:
    """A commit function that remembers each batch it was given and answers each item."""

    def __init__(self, *, hold: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.hold = hold

    async def __call__(self, items: list[int]) -> list[Outcome]:
        self.batches.append(list(items))
        if self.hold is not None:
            await self.hold.wait()
        return [(True, item * 10) if item >= 0 else (False, ValueError(item)) for item in items]


class TestGroupCommit:
    """Items queued while a batch is in flight go together into the next, bounded, batch."""

    async def test_an_idle_queue_commits_the_first_item_alone_at_once(self) -> None:
        """A caller with nobody else around is a batch of one: it waits for no company."""
        commit = Counting()
        group: GroupCommit[int] = GroupCommit(commit, limit=8)
        assert 10 == await asyncio.wait_for(group.submit(1), 1)
        assert [[1]] == commit.batches

    async def test_items_arriving_during_a_flight_form_the_next_batch(self) -> None:
        """While one batch commits, later callers queue; the next batches take at most `limit`."""
        hold = asyncio.Event()
        commit = Counting(hold=hold)
        group: GroupCommit[int] = GroupCommit(commit, limit=4)
        first = asyncio.create_task(group.submit(0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        rest = [asyncio.create_task(group.submit(n)) for n in range(1, 11)]
        await asyncio.sleep(0)
        hold.set()
        assert [0, *range(10, 110, 10)] == await asyncio.gather(first, *rest)
        assert [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]] == commit.batches

    async def test_a_caller_right_after_its_own_batch_is_not_stranded(self) -> None:
        """A submit made as the last batch ends is still committed (its runner was finishing)."""
        group: GroupCommit[int] = GroupCommit(Counting(), limit=8)
        for n in range(5):
            assert n * 10 == await asyncio.wait_for(group.submit(n), 1)

    async def test_each_caller_gets_its_own_outcome(self) -> None:
        """One item's failure is raised to its caller only."""
        group: GroupCommit[int] = GroupCommit(Counting(), limit=8)
        results = await asyncio.gather(
            group.submit(1), group.submit(-1), group.submit(2), return_exceptions=True
        )
        assert 10 == results[0] and 20 == results[2]
        assert isinstance(results[1], ValueError)

    async def test_a_failing_commit_fails_every_caller_of_its_batch(self) -> None:
        """When the commit itself raises, each caller of that batch hears it."""

        async def broken(items: list[int]) -> list[Outcome]:
            raise StoreUnavailable("lost")

        group: GroupCommit[int] = GroupCommit(broken, limit=8)
        results = await asyncio.gather(*(group.submit(n) for n in range(3)), return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in results)


class TestTwoFlights:
    """With two flights, what arrives while one batch commits goes at once in a second one,
    except an item whose key the batch in flight holds: it waits for that batch."""

    async def test_a_second_batch_commits_while_the_first_is_in_flight(self) -> None:
        """An item arriving during a flight starts the second flight; the next ones queue."""
        hold = asyncio.Event()
        commit = Counting(hold=hold)
        group: GroupCommit[int] = GroupCommit(commit, limit=8, flights=2)
        calls = [asyncio.create_task(group.submit(0))]
        await settle()
        calls.append(asyncio.create_task(group.submit(1)))
        await settle()
        assert [[0], [1]] == commit.batches
        calls += [asyncio.create_task(group.submit(n)) for n in (2, 3)]
        await settle()
        hold.set()
        assert [0, 10, 20, 30] == await asyncio.gather(*calls)
        assert [[0], [1], [2, 3]] == commit.batches

    async def test_one_keys_items_never_ride_two_flights_at_once(self) -> None:
        """A job's later items wait for the batch holding its first, then go together in
        their order; another job's item takes the free flight meanwhile."""
        hold = asyncio.Event()
        commit = Counting(hold=hold)
        group: GroupCommit[int] = GroupCommit(commit, limit=8, flights=2, key=lambda n: n % 10)
        calls = [asyncio.create_task(group.submit(1))]
        await settle()
        calls += [asyncio.create_task(group.submit(n)) for n in (11, 2, 21, 3)]
        await settle()
        assert [[1], [2, 3]] == commit.batches
        hold.set()
        assert [10, 110, 20, 210, 30] == await asyncio.gather(*calls)
        assert [[1], [2, 3], [11, 21]] == commit.batches


async def settle() -> None:
    """Let the tasks started so far run up to their next wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def running_for(store: PostgresStore, n: int, progress: float = 0.5) -> Recorded:
    """Job `n` is running, said by a callback whose request is `req_{n}_{progress}`."""
    return await store.record(
        Write(
            update=make_update(Status.RUNNING, progress),
            source="callback",
            job_id=f"job_{n}",
            raw=make_raw(f"req_{n}_{progress}"),
        ),
        route=route_to("h"),
    )


async def sent_by(
    store: PostgresStore, sent: list[str], calls: list[Coroutine[Any, Any, Any]]
) -> list[str]:
    """The statements sent while `calls` ran at once, the pool's reset on release left out."""
    sent.clear()
    await asyncio.gather(*calls)
    await asyncio.sleep(0.05)  # a query logger is called soon after its statement
    return [query for query in sent if "RESET ALL" not in query]


class TestBatchedIngest:
    """Concurrent records on PostgreSQL commit together and each caller gets its own result."""

    async def test_concurrent_records_are_all_committed_each_with_its_own_result(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """Forty records at once: each caller's event is its job's, and every row is stored."""
        for n in range(40):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
        results = await asyncio.gather(*(running_for(pg, n) for n in range(40)))
        for n, recorded in enumerate(results):
            assert (f"job_{n}", Disposition.APPLIED) == (
                recorded.event.job_id,
                recorded.event.disposition,
            )
            assert [f"job_{n}"] == [d.job_id for d in recorded.deliveries]
            assert Status.RUNNING == recorded.job.status
        events = await db.fetch("SELECT id, job_id, request_id FROM events ORDER BY seq")
        assert {(r.event.id, f"job_{n}", f"req_{n}_0.5") for n, r in enumerate(results)} == {
            tuple(row) for row in events
        }
        assert 40 == await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'")
        assert 40 == await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'running'")

    async def test_one_jobs_updates_in_batches_of_two_flights_apply_in_order(
        self, pg_url: str, db: asyncpg.Connection
    ) -> None:
        """Rising progress for six jobs at once, in batches of four over two flights: every
        update applies (none is late, as one overtaken by a later one would be), in order."""
        store = PostgresStore(f"{pg_url}?batch_size=4")
        await store.open()
        try:
            for n in range(6):
                await add_job(store, f"job_{n}", task_id=f"task-{n}")
            results = await asyncio.gather(
                *(running_for(store, n, step / 10) for step in range(1, 10) for n in range(6))
            )
        finally:
            await store.close()
        assert {Disposition.APPLIED} == {recorded.event.disposition for recorded in results}
        for n in range(6):
            rows = await db.fetch(
                "SELECT progress FROM events WHERE job_id = $1 ORDER BY seq", f"job_{n}"
            )
            assert [step / 10 for step in range(1, 10)] == [row[0] for row in rows]

    async def test_a_batch_takes_the_same_statements_whatever_its_size(self, pg_url: str) -> None:
        """One record and thirty concurrent ones cost the same statements: one transaction."""
        store = PostgresStore(f"{pg_url}?pool_size=1&pool_min=1")
        await store.open()
        sent: list[str] = []
        try:
            for n in range(31):
                await add_job(store, f"job_{n}", task_id=f"task-{n}")
            async with store.pool.acquire() as connection:
                connection.add_query_logger(lambda query: sent.append(query.query))
            await running_for(store, 30)  # the first use of a statement looks up its types
            one = await sent_by(store, sent, [running_for(store, 30, 0.6)])
            thirty = await sent_by(store, sent, [running_for(store, n) for n in range(30)])
        finally:
            await store.close()
        # BEGIN, lock the jobs, find duplicates, write everything, COMMIT.
        assert 5 == len(one)
        assert len(one) == len(thirty)
        assert 1 == sum(query == "BEGIN;" for query in thirty)

    async def test_a_batch_mixes_fresh_late_duplicate_and_failing_items(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """In one batch, a terminal job's event is late, a repeat is a duplicate, an unknown
        job fails alone, a refused token writes nothing; the fresh ones apply."""
        await add_job(pg, "job_done", task_id="t-done", status=Status.SUCCEEDED)
        await add_job(pg, "job_dup", task_id="t-dup")
        await add_job(pg, "job_tok", task_id="t-tok", token_hash="tok", secret_hash="sec")
        for n in range(3):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
        await pg.record(
            Write(update=make_update(Status.RUNNING, 0.3), source="callback", job_id="job_dup"),
            route=route_to("h"),
        )

        def refuse(match: TokenMatch) -> bool:
            return match.secret_hash == "other"

        calls = [
            running_for(pg, 0),
            pg.record(
                Write(
                    update=make_update(Status.RUNNING, 0.9), source="callback", job_id="job_done"
                ),
                route=route_to("h"),
            ),
            pg.record(
                Write(update=make_update(Status.RUNNING, 0.3), source="callback", job_id="job_dup"),
                route=route_to("h"),
            ),
            pg.record(
                Write(
                    update=make_update(Status.RUNNING, 0.3), source="callback", job_id="job_none"
                ),
                route=route_to("h"),
            ),
            pg.record_by_token(
                "tok",
                refuse,
                Write(
                    update=make_update(Status.RUNNING, 0.2),
                    source="callback",
                    raw=make_raw("req_tok"),
                ),
                route=route_to("h"),
            ),
            running_for(pg, 1),
            pg.record(
                Write(
                    update=make_update(Status.SUCCEEDED, task_id="t-new"),
                    source="callback",
                    new_job=NewJob(job=make_job("job_new", task_id="t-new")),
                ),
                route=route_to("h"),
            ),
            pg.record_nudge("job_2", make_raw("req_nudge"), poll_at=123.0),
            running_for(pg, 2),
        ]
        fresh0, late, dup, unknown, refused, fresh1, new, nudged, fresh2 = await asyncio.gather(
            *calls, return_exceptions=True
        )
        assert [Disposition.APPLIED] * 3 == [r.event.disposition for r in (fresh0, fresh1, fresh2)]
        assert (Disposition.LATE, []) == (late.event.disposition, late.deliveries)
        assert (Disposition.DUPLICATE, []) == (dup.event.disposition, dup.deliveries)
        assert isinstance(unknown, LookupError)
        assert None is refused and None is nudged
        assert (Status.SUCCEEDED, 1) == (new.job.status, len(new.deliveries))
        assert 0 == await db.fetchval("SELECT count(*) FROM requests WHERE id = 'req_tok'")
        assert 0 == await db.fetchval(
            "SELECT count(*) FROM events WHERE job_id IN ('job_tok', 'job_none')"
        )
        assert "succeeded" == await db.fetchval("SELECT status FROM jobs WHERE id = 'job_done'")
        assert 2 == await db.fetchval("SELECT count(*) FROM events WHERE job_id = 'job_dup'")
        assert ("succeeded", None) == tuple(
            await db.fetchrow("SELECT status, next_poll_at FROM jobs WHERE task_id = 't-new'")
        )
        assert 123.0 == await db.fetchval("SELECT next_poll_at FROM jobs WHERE id = 'job_2'")
        assert 5 == await db.fetchval("SELECT count(*) FROM deliveries")

    async def test_one_callers_bad_row_fails_only_that_caller(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """A request the database refuses (a NUL in a text column) fails its caller alone."""
        for n in range(6):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
        bad = msgspec.structs.replace(make_raw("req_bad"), path="/hooks/apiframe/\x00")

        async def one(n: int) -> Recorded:
            if n == 3:
                return await pg.record(
                    Write(
                        update=make_update(Status.RUNNING, 0.5),
                        source="callback",
                        job_id="job_3",
                        raw=bad,
                    ),
                    route=route_to("h"),
                )
            return await running_for(pg, n)

        results = await asyncio.gather(*(one(n) for n in range(6)), return_exceptions=True)
        assert isinstance(results[3], asyncpg.PostgresError)
        assert all(isinstance(r, Recorded) for n, r in enumerate(results) if n != 3)
        assert 5 == await db.fetchval("SELECT count(*) FROM events")
        assert 0 == await db.fetchval("SELECT count(*) FROM events WHERE job_id = 'job_3'")

    async def test_a_commit_lost_is_unavailable_to_every_caller_of_the_batch(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """The server connection dies at COMMIT: each caller gets StoreUnavailable, nothing is
        stored, and the next batch commits on a fresh connection."""
        for n in range(8):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
        await db.execute(
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;"
            " CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON events"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die()"
        )
        results = await asyncio.gather(
            *(running_for(pg, n) for n in range(6)), return_exceptions=True
        )
        assert [StoreUnavailable] * 6 == [type(result) for result in results]
        assert 0 == await db.fetchval("SELECT count(*) FROM events")
        await db.execute("DROP TRIGGER die_at_commit ON events")
        assert Disposition.APPLIED == (await running_for(pg, 7)).event.disposition


class TestBatchesOfTwoProcesses:
    """Batches of two stores naming the same jobs wait for each other and never deadlock."""

    async def test_overlapping_batches_in_opposite_orders_all_commit(
        self, pg_url: str, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """Each of two stores records every job, in opposite orders: every event is stored."""
        other = PostgresStore(pg_url)
        await other.open()
        try:
            for n in range(10):
                await add_job(pg, f"job_{n}", task_id=f"task-{n}")

            async def each(store: PostgresStore, order: range, progress: float) -> list[Any]:
                return await asyncio.gather(
                    *(running_for(store, n, progress) for n in order), return_exceptions=True
                )

            results = await asyncio.gather(
                each(pg, range(10), 0.2), each(other, range(9, -1, -1), 0.4)
            )
        finally:
            await other.close()
        assert [] == [r for r in results[0] + results[1] if not isinstance(r, Recorded)]
        assert 20 == await db.fetchval("SELECT count(*) FROM events")
        assert {0.4} == {row[0] for row in await db.fetch("SELECT progress FROM jobs")}


class TestBatchedOutcomes:
    """Deliveries' outcomes on PostgreSQL are written together, each fenced by its attempt."""

    async def test_concurrent_outcomes_each_apply_under_their_own_fence(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """Twenty finishes at once land; one from a runner whose claim moved on does not."""
        for n in range(20):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
            await running_for(pg, n)
        claimed = await pg.claim_deliveries(limit=20, lease=30, at=now(), worker=None)
        assert 20 == len(claimed)
        stale = claimed[0].delivery.id
        await asyncio.gather(
            *(
                pg.finish_delivery(
                    c.delivery.id, at=now(), attempt=c.delivery.attempts + (c.delivery.id == stale)
                )
                for c in claimed
            )
        )
        states = dict(await db.fetch("SELECT id, state FROM deliveries"))
        assert "running" == states.pop(stale)
        assert {"done"} == set(states.values())

    async def test_writes_to_one_delivery_in_one_batch_apply_in_order(
        self, pg: PostgresStore, db: asyncpg.Connection
    ) -> None:
        """A retry then a kill of the same delivery, in one batch, leave it dead."""
        for n in range(2):
            await add_job(pg, f"job_{n}", task_id=f"task-{n}")
        other, delivery = [(await running_for(pg, n)).deliveries[0] for n in range(2)]
        await asyncio.gather(
            pg.finish_delivery(other.id, at=now()),
            pg.retry_delivery(delivery.id, error="first", next_attempt_at=now() + 60, at=now()),
            pg.kill_delivery(delivery.id, error="second", at=now()),
        )
        row = await db.fetchrow(
            "SELECT state, last_error FROM deliveries WHERE id = $1", delivery.id
        )
        assert ("dead", "second") == tuple(row)

    def test_a_delivery_named_twice_is_written_in_rounds_in_order(self) -> None:
        """Each round names a delivery once; a delivery's second write is in a later round."""
        writes = [
            DeliveryWrite(
                delivery_id=name,
                state=DeliveryState.DONE,
                error=str(n),
                next_attempt_at=None,
                at=0.0,
                attempt=None,
            )
            for n, name in enumerate("abacab")
        ]
        rounds = [[(w.delivery_id, w.error) for w in r] for r in write_rounds(writes)]
        assert [
            [("a", "0"), ("b", "1"), ("c", "3")],
            [("a", "2"), ("b", "5")],
            [("a", "4")],
        ] == rounds
