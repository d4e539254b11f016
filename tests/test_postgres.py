"""PostgreSQL specifics: migrations and the schema check, claims shared by several stores,
NOTIFY wake-ups across connections, lease takeover, and connection faults as 503s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from procs import run_cli

from receiver.dispatch import Dispatcher, Registry
from receiver.errors import ConfigError, StoreUnavailable
from receiver.ingest import Ingest
from receiver.models import DeliveryState, Event, Job, Status, Update, now
from receiver.store import NewJob, Write, display_url, store_for
from receiver.store.migrations import migrations
from receiver.store.postgres import PostgresStore, is_fault, pool_options
from receiver.testing import TEST_ADMIN_TOKEN, running_receiver

SECRET = "static-secret-for-postgres-tests"


def apiframe_callback(task_id: str, status: str = "finished") -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_type": "runway",
        "status": status,
        "percentage": 100,
        "video_url": f"https://cdn.example/{task_id}.mp4",
    }


def job(job_id: str, task_id: str) -> Job:
    return Job(
        id=job_id,
        provider="apiframe",
        task_id=task_id,
        status=Status.QUEUED,
        created_at=now(),
        updated_at=now(),
    )


def running(progress: float) -> Update:
    return Update(Status.RUNNING, "running", progress=progress)


def route_h(event: Event, job: Job) -> list[str]:
    return ["h"]


class TestUrls:
    """The database URL selects the backend, carries pool options, and is shown without password."""

    def test_both_schemes_select_postgres(self) -> None:
        """postgresql:// and postgres:// give a PostgresStore."""
        for url in ("postgresql://u@h/db", "postgres://u@h/db"):
            assert isinstance(store_for(url), PostgresStore)

    def test_pool_options_are_split_off(self) -> None:
        """Our options leave the DSN; server settings stay; statement_timeout and
        lock_timeout have defaults, which the URL overrides."""
        dsn, options = pool_options(
            "postgresql://u@h/db?pool_size=3&pool_timeout=0.5&batch_size=8&x=1"
        )
        assert {"max_size": 3, "min_size": 1, "timeout": 0.5, "batch_size": 8} == options
        assert "postgresql://u@h/db?x=1&statement_timeout=30000&lock_timeout=5000" == dsn
        dsn, _ = pool_options("postgresql://u@h/db?lock_timeout=200")
        assert "postgresql://u@h/db?lock_timeout=200&statement_timeout=30000" == dsn

    def test_bad_pool_options_are_config_errors(self) -> None:
        """A pool size that is not a number, or below the minimum, is refused in one line."""
        for query in ("pool_size=many", "pool_size=0", "pool_min=5&pool_size=2", "batch_size=0"):
            with pytest.raises(ConfigError):
                pool_options(f"postgresql://u@h/db?{query}")

    def test_password_is_hidden(self) -> None:
        """A URL shown in messages never carries its password."""
        assert "postgresql://u:***@h:5432/db" == display_url("postgresql://u:s3cret@h:5432/db")
        assert "sqlite:///./receiver.db" == display_url("sqlite:///./receiver.db")


class TestMigrations:
    """`migrate` applies numbered files once; open refuses a schema that is behind."""

    async def test_unmigrated_database_is_refused_at_open(self, pg_database: str) -> None:
        """Opening an empty database names the command that fixes it."""
        with pytest.raises(ConfigError, match="run `receiver migrate`"):
            await PostgresStore(pg_database).open()

    async def test_migrate_applies_each_file_once(self, pg_database: str) -> None:
        """The first migrate applies every file, the second none, and the table lists them."""
        store = PostgresStore(pg_database)
        assert [m.name for m in migrations("postgres")] == await store.migrate()
        assert [] == await store.migrate()
        assert migrations("postgres")[-1].version == await store.schema_version()
        await store.open()
        await store.close()

    async def test_a_migration_missing_below_the_newest_is_pending(self, pg_database: str) -> None:
        """A database that has the newest migration but lacks an older one (merged later,
        below it) is refused at open, naming the one it lacks."""
        store = PostgresStore(pg_database)
        await store.migrate()
        older = migrations("postgres")[-2]
        connection = await asyncpg.connect(pg_database)
        try:
            await connection.execute(
                "DELETE FROM schema_migrations WHERE version = $1", older.version
            )
        finally:
            await connection.close()
        with pytest.raises(ConfigError, match=f"lacks migration {older.version:04d}"):
            await PostgresStore(pg_database).open()

    async def test_concurrent_migrations_do_not_collide(self, pg_database: str) -> None:
        """Two migrators at once (two deploys) apply each file exactly once between them."""
        results = await asyncio.gather(
            PostgresStore(pg_database).migrate(), PostgresStore(pg_database).migrate()
        )
        assert sorted(m.name for m in migrations("postgres")) == sorted(results[0] + results[1])

    async def test_cli_serve_and_worker_refuse_then_migrate_fixes(
        self, pg_database: str, tmp_path: Path
    ) -> None:
        """`serve` and `worker` stop with one line on an unmigrated database; `migrate` fixes it."""
        env = {
            "RECEIVER_DATABASE_URL": pg_database,
            "RECEIVER_HANDLERS": "",
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        }
        for command in ("serve", "worker"):
            code, _, err = await run_cli(command, env=env, cwd=tmp_path)
            assert (2, 1) == (code, len(err.strip().splitlines())), err
            assert "run `receiver migrate` first" in err
        code, out, err = await run_cli("migrate", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert [f"applied {m.name}" for m in migrations("postgres")] == out.splitlines()[:-1]
        assert (
            migrations("postgres")[-1].version == await PostgresStore(pg_database).schema_version()
        )


class TestSharedClaims:
    """Several stores on one database (several processes) never claim the same work twice."""

    async def test_concurrent_claimers_split_the_deliveries(self, pg_url: str) -> None:
        """Four claimers racing over 200 deliveries take each exactly once."""
        stores = [PostgresStore(pg_url) for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            for n in range(200):
                await stores[0].create_job(NewJob(job=job(f"job_{n:03}", f"t-{n}")))
                await stores[0].record(
                    Write(update=running(0.5), source="t", job_id=f"job_{n:03}"), route=route_h
                )

            async def claim_all(store: PostgresStore) -> list[str]:
                taken: list[str] = []
                while batch := await store.claim_deliveries(limit=7, lease=60, at=now()):
                    taken += [c.delivery.id for c in batch]
                return taken

            results = await asyncio.gather(*(claim_all(s) for s in stores))
        finally:
            for store in stores:
                await store.close()
        every = [delivery for taken in results for delivery in taken]
        assert (200, 200) == (len(every), len(set(every)))
        assert all(results), "every claimer should have won some"

    async def test_concurrent_pollers_split_the_polls(self, pg_url: str) -> None:
        """Two claimers racing over 50 due polls take each job once."""
        stores = [PostgresStore(pg_url) for _ in range(2)]
        for store in stores:
            await store.open()
        try:
            for n in range(50):
                new = NewJob(job=job(f"job_{n:03}", f"t-{n}"), next_poll_at=now() - 1)
                await stores[0].create_job(new)

            async def claim_all(store: PostgresStore) -> list[str]:
                taken: list[str] = []
                while batch := await store.claim_polls(limit=3, lease=60, at=now()):
                    taken += [j.id for j in batch]
                return taken

            first, second = await asyncio.gather(*(claim_all(s) for s in stores))
        finally:
            for store in stores:
                await store.close()
        assert (50, 50) == (len(first + second), len(set(first + second)))

    async def test_racing_callbacks_for_an_unknown_task_make_one_job(self, pg_url: str) -> None:
        """The same new task recorded by two stores at once ends as one job with two events."""
        stores = [PostgresStore(pg_url) for _ in range(2)]
        for store in stores:
            await store.open()
        try:
            await asyncio.gather(
                *(
                    store.record(
                        Write(
                            update=running(0.1 * (n + 1)),
                            source="callback",
                            new_job=NewJob(job=job(f"job_{n}", "t-same")),
                        ),
                        route=route_h,
                    )
                    for n, store in enumerate(stores)
                )
            )
            page = await stores[0].list_jobs()
            assert 1 == len(page.items)
            assert 2 == len(await stores[0].list_events(page.items[0].id))
        finally:
            for store in stores:
                await store.close()


class TestNotify:
    """A commit with new work wakes listeners on other connections at once."""

    async def test_record_and_nudge_wake_other_stores(self, pg_url: str, pg: PostgresStore) -> None:
        """Deliveries wake the `deliveries` callback, a nudge's poll the `polls` one."""
        listener = PostgresStore(pg_url)
        await listener.open()
        woken: dict[str, asyncio.Event] = {"deliveries": asyncio.Event(), "polls": asyncio.Event()}
        try:
            await listener.listen({kind: event.set for kind, event in woken.items()})
            # A (re)connected listener wakes everything once, in case it missed notices.
            await asyncio.wait_for(woken["deliveries"].wait(), 5)
            for event in woken.values():
                event.clear()
            await pg.create_job(NewJob(job=job("job_1", "t-1")))
            await pg.record(Write(update=running(0.2), source="t", job_id="job_1"), route=route_h)
            await asyncio.wait_for(woken["deliveries"].wait(), 2)
            assert not woken["polls"].is_set()
            from receiver.models import RawRequest

            raw = RawRequest(
                id="req_1",
                received_at=now(),
                provider="apiframe",
                method="GET",
                path="/hooks/apiframe/[token]",
                query="uuid=1",
                headers={},
                body=b"",
                client=None,
            )
            await pg.record_nudge("job_1", raw, poll_at=now())
            await asyncio.wait_for(woken["polls"].wait(), 2)
        finally:
            await listener.close()


async def _write_outcome(store: PostgresStore, delivery_id: str, outcome: str) -> None:
    """A runner's write of its attempt 1's outcome: done, dead, or a retry a minute on."""
    if outcome == "done":
        await store.finish_delivery(delivery_id, at=now(), attempt=1)
    elif outcome == "dead":
        await store.kill_delivery(delivery_id, error="gave up", at=now(), attempt=1)
    else:
        due = now() + 60
        await store.retry_delivery(
            delivery_id, error="boom", next_attempt_at=due, at=now(), attempt=1
        )


@contextlib.asynccontextmanager
async def _outcome_held(
    pg_url: str, store: PostgresStore, delivery_id: str, outcome: str
) -> AsyncIterator[None]:
    """Inside the block, `outcome`'s write for attempt 1 of the delivery has been made and
    waits on another connection's lock of the delivery's row; it commits after the block."""
    blocker = await asyncpg.connect(pool_options(pg_url)[0])
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", delivery_id)
            held = asyncio.ensure_future(_write_outcome(store, delivery_id, outcome))
            await asyncio.sleep(0.2)
            assert not held.done()  # the outcome waits for the row's lock
            yield
        await asyncio.wait_for(held, 5)
    finally:
        await blocker.close()


class TestFinishingSibling:
    """A delivery whose handler has returned here holds back neither the next delivery of
    its job and handler written meanwhile nor a claim of the next one, while that outcome
    is still being written (on SQLite the one write queue has committed it before either
    reads); a retry, which runs the sibling again, still does."""

    async def _recorded_while_held(
        self, pg_url: str, pg: PostgresStore, outcome: str
    ) -> list[DeliveryState]:
        """Callback 1 recorded claimed, callback 2 recorded while the outcome of callback
        1's delivery is held: the state of callback 2's delivery, then of callback 1's."""
        from receiver.store import Claim

        await pg.create_job(NewJob(job=job("job_1", "t-1")))
        claim = Claim(most=4, lease=60.0, worker=None)
        write = Write(update=running(0.1), source="t", job_id="job_1")
        [first] = (await pg.record(write, route=route_h, claim=claim)).deliveries
        assert DeliveryState.RUNNING is first.state
        async with _outcome_held(pg_url, pg, first.id, outcome):
            write = Write(update=running(0.2), source="t", job_id="job_1")
            [second] = (await pg.record(write, route=route_h, claim=claim)).deliveries
        [stored] = [d for d in await pg.list_deliveries(job_id="job_1") if d.id == first.id]
        return [second.state, stored.state]

    async def _claimed_while_held(
        self, pg_url: str, pg: PostgresStore, outcome: str
    ) -> list[float | None]:
        """Two pending deliveries, the first claimed: the progress of what a claim takes
        while the first one's outcome is held."""
        await pg.create_job(NewJob(job=job("job_1", "t-1")))
        for progress in (0.1, 0.2):
            write = Write(update=running(progress), source="t", job_id="job_1")
            await pg.record(write, route=route_h)
        [first] = await pg.claim_deliveries(limit=10, lease=60, at=now())
        async with _outcome_held(pg_url, pg, first.delivery.id, outcome):
            claimed = await pg.claim_deliveries(limit=10, lease=60, at=now())
        return [c.event.progress for c in claimed]

    async def test_written_claimed_after_a_finished_one(
        self, pg_url: str, pg: PostgresStore
    ) -> None:
        done = await self._recorded_while_held(pg_url, pg, "done")
        assert [DeliveryState.RUNNING, DeliveryState.DONE] == done

    async def test_written_pending_behind_one_to_retry(
        self, pg_url: str, pg: PostgresStore
    ) -> None:
        retried = await self._recorded_while_held(pg_url, pg, "retry")
        assert [DeliveryState.PENDING, DeliveryState.PENDING] == retried

    async def test_claimed_after_a_finished_one(self, pg_url: str, pg: PostgresStore) -> None:
        assert [0.2] == await self._claimed_while_held(pg_url, pg, "done")

    async def test_claimed_after_a_dead_one(self, pg_url: str, pg: PostgresStore) -> None:
        assert [0.2] == await self._claimed_while_held(pg_url, pg, "dead")

    async def test_not_claimed_behind_one_to_retry(self, pg_url: str, pg: PostgresStore) -> None:
        assert [] == await self._claimed_while_held(pg_url, pg, "retry")


class TestLeaseTakeover:
    """A delivery leased by a worker that died runs elsewhere once the lease runs out."""

    async def test_dead_workers_delivery_is_taken_after_its_lease(
        self, pg_url: str, pg: PostgresStore, registry: Registry
    ) -> None:
        """Another dispatcher does not steal a live lease at start, and runs it after expiry."""
        ran: list[float] = []

        @registry.on("running")
        async def handle(event: Event, job: Job) -> None:
            ran.append(now())

        await pg.create_job(NewJob(job=job("job_1", "t-1")))
        await Ingest(pg, registry).record(Write(update=running(0.2), source="t", job_id="job_1"))
        [claimed] = await pg.claim_deliveries(limit=1, lease=1.5, at=now())
        lease_ends = claimed.delivery.lease_until
        assert lease_ends is not None
        await pg.close()  # the worker that held it is gone

        other = PostgresStore(pg_url)
        await other.open()
        dispatcher = Dispatcher(other, registry, idle_wait=0.1, timeout=5)
        task = asyncio.create_task(dispatcher.run())
        try:
            for _ in range(100):
                if ran:
                    break
                await asyncio.sleep(0.05)
        finally:
            await dispatcher.stop()
            await task
        try:
            [delivery] = await other.list_deliveries()
        finally:
            await other.close()
        assert 1 == len(ran)
        assert ran[0] >= lease_ends
        assert (DeliveryState.DONE, 2) == (delivery.state, delivery.attempts)


class TestFaults:
    """An unreachable server, an exhausted pool and a statement timeout are StoreUnavailable."""

    async def test_unreachable_server(self) -> None:
        """Nothing listening at the address: unavailable, not an OSError."""
        with pytest.raises(StoreUnavailable):
            await PostgresStore("postgresql://postgres@127.0.0.1:1/none").open()

    async def test_pool_exhausted(self, pg_url: str) -> None:
        """All connections busy past pool_timeout: unavailable; free again, it works."""
        store = PostgresStore(f"{pg_url}?pool_size=1&pool_timeout=0.2")
        await store.open()
        try:
            async with store.pool.acquire():
                with pytest.raises(StoreUnavailable):
                    await store.get_job("job_1")
            assert None is await store.get_job("job_1")
        finally:
            await store.close()

    async def test_statement_timeout(self, pg_url: str) -> None:
        """A write stuck behind a lock past statement_timeout is unavailable and rolled back."""
        store = PostgresStore(f"{pg_url}?statement_timeout=200")
        await store.open()
        blocker = await asyncpg.connect(pg_url)
        try:
            await store.create_job(NewJob(job=job("job_1", "t-1")))
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM jobs WHERE id = 'job_1' FOR UPDATE")
                with pytest.raises(StoreUnavailable):
                    await store.record(
                        Write(update=running(0.3), source="t", job_id="job_1"), route=route_h
                    )
            assert [] == await store.list_events("job_1")
            await store.record(
                Write(update=running(0.3), source="t", job_id="job_1"), route=route_h
            )
            assert 1 == len(await store.list_events("job_1"))
        finally:
            await blocker.close()
            await store.close()

    async def test_a_locked_job_fails_alone_after_lock_timeout(self, pg_url: str) -> None:
        """A job row held locked elsewhere stalls its batch only for lock_timeout: the
        batch's other jobs commit (each alone), the locked one's write is unavailable."""
        store = PostgresStore(f"{pg_url}?lock_timeout=300&batch_size=64")
        await store.open()
        blocker = await asyncpg.connect(pg_url)
        try:
            ids = [f"job_{n}" for n in range(1, 7)]
            for n, job_id in enumerate(ids, start=1):
                await store.create_job(NewJob(job=job(job_id, f"t-{n}")))
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM jobs WHERE id = 'job_1' FOR UPDATE")
                writes = [
                    store.record(Write(update=running(0.3), source="t", job_id=i), route=route_h)
                    for i in ids
                ]
                # Without a lock timeout every write waits for the blocker (30 s).
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*writes, return_exceptions=True), timeout=10
                )
                assert isinstance(outcomes[0], StoreUnavailable)
                assert all(o.job.id == i for o, i in zip(outcomes[1:], ids[1:], strict=True))
            assert [] == await store.list_events("job_1")
            assert [1] * 5 == [len(await store.list_events(i)) for i in ids[1:]]
        finally:
            await blocker.close()
            await store.close()

    def test_bugs_are_not_faults(self) -> None:
        """A constraint violation or a syntax error is a bug to see, not a 503."""
        assert not is_fault(asyncpg.UniqueViolationError("dup"))
        assert not is_fault(asyncpg.PostgresSyntaxError("bad"))
        assert is_fault(asyncpg.QueryCanceledError("statement timeout"))
        assert is_fault(asyncpg.LockNotAvailableError("lock timeout"))
        assert is_fault(ConnectionRefusedError())

    async def test_ingest_answers_503_when_the_pool_is_exhausted(
        self, pg_url: str, tmp_path: Path
    ) -> None:
        """A callback that cannot be committed gets 503 and Retry-After, then 200 once free."""
        store = PostgresStore(f"{pg_url}?pool_size=1&pool_timeout=0.2")
        env = {"RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET, "RECEIVER_DATABASE_URL": pg_url}
        async with (
            running_receiver(tmp_path, env=env, store=store) as live,
            httpx.AsyncClient(base_url=live.url) as client,
        ):
            headers = {"x-webhook-secret": SECRET}
            async with store.pool.acquire():
                answer = await client.post(
                    "/hooks/apiframe", json=apiframe_callback("t-1"), headers=headers
                )
            assert (503, "5") == (answer.status_code, answer.headers.get("retry-after"))
            answer = await client.post(
                "/hooks/apiframe", json=apiframe_callback("t-1"), headers=headers
            )
            assert 200 == answer.status_code
            assert ["t-1"] == [j.task_id for j in (await store.list_jobs()).items]

    async def test_ingest_answers_503_on_statement_timeout(
        self, pg_url: str, tmp_path: Path
    ) -> None:
        """A callback whose job row is locked past statement_timeout gets 503, then 200."""
        from receiver.verify import digest

        store = PostgresStore(f"{pg_url}?statement_timeout=300")
        env = {"RECEIVER_DATABASE_URL": pg_url}
        blocker = await asyncpg.connect(pg_url)
        try:
            async with (
                running_receiver(tmp_path, env=env, store=store) as live,
                httpx.AsyncClient(base_url=live.url) as client,
            ):
                await store.create_job(
                    NewJob(
                        job=job("job_1", "t-1"),
                        token_hash=digest("tok-1"),
                        secret_hash=digest("sec-1"),
                    )
                )
                path, headers = "/hooks/apiframe/tok-1", {"x-webhook-secret": "sec-1"}
                async with blocker.transaction():
                    await blocker.execute("SELECT 1 FROM jobs WHERE id = 'job_1' FOR UPDATE")
                    answer = await client.post(path, json=apiframe_callback("t-1"), headers=headers)
                assert (503, "5") == (answer.status_code, answer.headers.get("retry-after"))
                assert [] == await store.list_events("job_1")
                answer = await client.post(path, json=apiframe_callback("t-1"), headers=headers)
                assert 200 == answer.status_code
                assert 1 == len(await store.list_events("job_1"))
        finally:
            await blocker.close()
