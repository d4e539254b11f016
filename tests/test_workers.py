"""Worker heartbeats on every backend: the store's `workers` contract, and the Heartbeat
and Dispatcher that use it (a dead worker's leased work is taken over in seconds; a live
one's never)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from receiver.config import load_settings
from receiver.dispatch import Dispatcher, Registry
from receiver.errors import ConfigError, StoreUnavailable
from receiver.heartbeat import Heartbeat, pid_scope, proven_dead, this_process
from receiver.ingest import Ingest
from receiver.models import DeliveryState, Event, Job, Status, Update, now
from receiver.runtime import Runtime
from receiver.store import NewJob, Store
from receiver.store.base import Worker, Write
from receiver.store.postgres import PostgresStore

T0 = 1_000.0


def worker(
    worker_id: str, *, host: str = "elsewhere", pid: int = 1, timeout: float = 15.0
) -> Worker:
    return Worker(id=worker_id, host=host, pid=pid, pid_scope="", timeout=timeout)


async def add_job(store: Store, job_id: str = "job_1", *, next_poll_at: float | None = None) -> Job:
    at = time.time()
    job = Job(
        id=job_id,
        provider="apiframe",
        task_id=f"t-{job_id}",
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )
    await store.create_job(NewJob(job=job, next_poll_at=next_poll_at))
    return job


async def pending(store: Store, job_id: str = "job_1", *, at: float = T0) -> str:
    """A job with one pending delivery (handler "h"), due at `at`; the delivery's id."""
    await add_job(store, job_id)
    recorded = await store.record(
        Write(
            update=Update(status=Status.RUNNING, raw_status="processing", progress=0.5),
            source="callback",
            job_id=job_id,
            at=at,
        ),
        route=lambda event, job: ["h"],
    )
    return recorded.deliveries[0].id


async def state_of(store: Store, delivery_id: str) -> tuple[DeliveryState, int]:
    [found] = [d for d in await store.list_deliveries() if d.id == delivery_id]
    return found.state, found.attempts


class TestWorkerRows:
    """A worker registers, beats, and is listed until it is reaped."""

    async def test_register_beat_list_and_reap(self, store: Store) -> None:
        """Registering stamps the heartbeat now; once reaped, a heartbeat answers False."""
        before = time.time()
        stored = await store.register_worker(worker("w1", host="h1", pid=42))
        assert ("w1", "h1", 42) == (stored.id, stored.host, stored.pid)
        assert abs(stored.heartbeat_at - before) < 5  # the store's clock, near ours here
        assert stored.started_at == stored.heartbeat_at
        await asyncio.sleep(0.01)
        assert await store.heartbeat("w1")
        [listed] = await store.list_workers()
        assert listed.heartbeat_at > stored.heartbeat_at
        reaped = await store.reap_workers(dead=["w1"], at=now())
        assert ["w1"] == reaped.workers
        assert [] == await store.list_workers()
        assert not await store.heartbeat("w1")

    async def test_registering_again_keeps_the_start(self, store: Store) -> None:
        """A worker that joins again (after being declared dead) keeps its first start time."""
        first = await store.register_worker(worker("w1"))
        await asyncio.sleep(0.01)
        again = await store.register_worker(worker("w1"))
        assert first.started_at == again.started_at
        assert again.heartbeat_at > first.heartbeat_at

    async def test_lateness_is_judged_on_the_stores_clock(self, store: Store) -> None:
        """A fresh worker is not reaped even when the caller's own clock (`at`) runs an hour
        ahead: heartbeats are compared with the store's clock, not the caller's."""
        await store.register_worker(worker("w1", timeout=5))
        reaped = await store.reap_workers(at=now() + 3600)
        assert [] == reaped.workers
        assert ["w1"] == [w.id for w in await store.list_workers()]

    async def test_without_late_only_the_named_are_reaped(self, store: Store) -> None:
        """With `late=False` a late heartbeat is left alone: only the workers named dead go."""
        await store.register_worker(worker("late", timeout=0.01))
        await store.register_worker(worker("named"))
        await asyncio.sleep(0.05)
        reaped = await store.reap_workers(late=False, dead=["named"], at=now())
        assert ["named"] == reaped.workers
        assert ["late"] == [w.id for w in await store.list_workers()]
        assert ["late"] == (await store.reap_workers(at=now())).workers

    async def test_a_late_heartbeat_is_reaped(self, store: Store) -> None:
        """A worker whose last heartbeat is older than the timeout is removed by anyone."""
        await store.register_worker(worker("late", timeout=0.2))
        await asyncio.sleep(0.3)
        await store.register_worker(worker("fresh", timeout=0.2))
        reaped = await store.reap_workers(at=now())
        assert ["late"] == reaped.workers
        assert ["fresh"] == [w.id for w in await store.list_workers()]

    async def test_each_worker_is_judged_by_its_own_timeout(self, store: Store) -> None:
        """A worker configured with a longer timeout (and so beating less often) is not late
        by another's shorter one."""
        await store.register_worker(worker("short", timeout=0.2))
        stored = await store.register_worker(worker("long", timeout=60))
        assert 60 == stored.timeout
        await asyncio.sleep(0.3)
        assert ["short"] == (await store.reap_workers(at=now())).workers
        assert ["long"] == [w.id for w in await store.list_workers()]


class TestTakeOver:
    """Deliveries and polls leased by a dead worker are taken over at once, fenced; a live
    worker's are never."""

    async def test_a_dead_workers_delivery_is_claimed_at_once(self, store: Store) -> None:
        """Reaped, its running delivery is pending again, its attempt counted, and another
        worker claims it long before the lease would have lapsed."""
        delivery_id = await pending(store)
        await store.register_worker(worker("dead"))
        await store.register_worker(worker("live"))
        assert 1 == len(await store.claim_deliveries(limit=5, lease=330, at=T0 + 1, worker="dead"))
        assert [] == await store.claim_deliveries(limit=5, lease=330, at=T0 + 2, worker="live")
        reaped = await store.reap_workers(dead=["dead"], at=T0 + 3)
        assert (["dead"], 1) == (reaped.workers, reaped.deliveries)
        assert (DeliveryState.PENDING, 1) == await state_of(store, delivery_id)
        assert T0 + 4 >= (await store.next_delivery_at() or 0)
        [again] = await store.claim_deliveries(limit=5, lease=330, at=T0 + 4, worker="live")
        assert (delivery_id, 2) == (again.delivery.id, again.delivery.attempts)
        assert "taken over" in (again.delivery.last_error or "")

    async def test_the_dead_runners_late_writes_change_nothing(self, store: Store) -> None:
        """The attempt fence holds: after the take-over, the dead runner's renewal, outcome and
        release are ignored, and the new runner's outcome stands."""
        delivery_id = await pending(store)
        await store.register_worker(worker("dead"))
        await store.register_worker(worker("live"))
        await store.claim_deliveries(limit=5, lease=330, at=T0 + 1, worker="dead")
        await store.reap_workers(dead=["dead"], at=T0 + 2)
        # Between the reap and the new claim: nothing of the old attempt applies either.
        assert not await store.renew_lease(delivery_id, lease_until=T0 + 500, attempt=1)
        await store.finish_delivery(delivery_id, at=T0 + 3, attempt=1)
        assert (DeliveryState.PENDING, 1) == await state_of(store, delivery_id)
        await store.claim_deliveries(limit=5, lease=330, at=T0 + 4, worker="live")
        await store.finish_delivery(delivery_id, at=T0 + 5, attempt=1)
        await store.release_delivery(delivery_id, at=T0 + 5, attempt=1)
        assert (DeliveryState.RUNNING, 2) == await state_of(store, delivery_id)
        await store.finish_delivery(delivery_id, at=T0 + 6, attempt=2)
        assert (DeliveryState.DONE, 2) == await state_of(store, delivery_id)

    async def test_a_live_workers_delivery_is_never_taken(self, store: Store) -> None:
        """While its heartbeat is fresh, nobody reaps it, and its lease keeps others off."""
        delivery_id = await pending(store)
        await store.register_worker(worker("busy"))
        await store.claim_deliveries(limit=5, lease=330, at=T0 + 1, worker="busy")
        assert await store.heartbeat("busy")
        reaped = await store.reap_workers(at=T0 + 100)
        assert ([], 0) == (reaped.workers, reaped.deliveries)
        assert [] == await store.claim_deliveries(limit=5, lease=330, at=T0 + 100)
        assert (DeliveryState.RUNNING, 1) == await state_of(store, delivery_id)

    async def test_a_worker_declared_dead_claims_nothing_until_it_joins_again(
        self, store: Store
    ) -> None:
        """Its row gone, its claims take nothing (the work is others' now); registered again,
        it claims as before."""
        await pending(store)
        await store.register_worker(worker("w1"))
        await store.reap_workers(dead=["w1"], at=T0)
        assert [] == await store.claim_deliveries(limit=5, lease=60, at=T0 + 1, worker="w1")
        await store.register_worker(worker("w1"))
        [claimed] = await store.claim_deliveries(limit=5, lease=60, at=T0 + 1, worker="w1")
        assert 1 == claimed.delivery.attempts

    async def test_unstamped_leases_are_left_to_lapse(self, store: Store) -> None:
        """A delivery claimed with no worker id (a scheduled drain) is not taken by a reap."""
        delivery_id = await pending(store)
        await store.claim_deliveries(limit=5, lease=60, at=T0 + 1)
        assert 0 == (await store.reap_workers(at=T0 + 2)).deliveries
        assert (DeliveryState.RUNNING, 1) == await state_of(store, delivery_id)

    async def test_a_dead_workers_poll_is_due_at_once(self, store: Store) -> None:
        """A poll leased by a dead worker is due at the reap; one it finished is left alone."""
        await store.register_worker(worker("dead"))
        await add_job(store, "job_leased", next_poll_at=T0)
        await add_job(store, "job_done", next_poll_at=T0)
        claimed = await store.claim_polls(limit=5, lease=120, at=T0 + 1, worker="dead")
        assert {"job_leased", "job_done"} == {job.id for job in claimed}
        await store.schedule_poll("job_done", T0 + 300, attempted=True)  # its poll finished
        reaped = await store.reap_workers(dead=["dead"], at=T0 + 2)
        assert 1 == reaped.polls
        assert T0 + 2 == await store.next_poll_at()
        await store.register_worker(worker("live"))
        taken = await store.claim_polls(limit=5, lease=120, at=T0 + 2, worker="live")
        assert ["job_leased"] == [job.id for job in taken]

    async def test_a_recorded_poll_answer_ends_the_polls_lease(self, store: Store) -> None:
        """Once the poll's answer is recorded with the next poll time, the poll is no longer
        the worker's: reaping it later leaves that schedule alone."""
        await store.register_worker(worker("w1"))
        await add_job(store, "job_1", next_poll_at=T0)
        await store.claim_polls(limit=5, lease=120, at=T0 + 1, worker="w1")
        for update in (
            Update(status=Status.RUNNING, raw_status="processing", progress=0.5),  # news
            Update(status=Status.RUNNING, raw_status="processing", progress=0.5),  # the same
        ):
            await store.claim_polls(limit=5, lease=120, at=T0 + 400, worker="w1")
            await store.record(
                Write(update=update, source="poll", job_id="job_1", next_poll_at=T0 + 300),
                route=lambda e, j: [],
            )
            assert 0 == (await store.reap_workers(dead=["w1"], at=T0 + 2)).polls
            assert T0 + 300 == await store.next_poll_at()
            await store.register_worker(worker("w1"))


class TestProvenDead:
    """Only a worker on this host and PID namespace whose pid is gone is proven dead."""

    def test_proof_needs_our_host_and_namespace_and_a_gone_pid(self) -> None:
        """A gone pid here proves death; elsewhere, or with a live pid, nothing is proven."""
        me = this_process()
        assert me.pid_scope == pid_scope() != "", "this test needs Linux's /proc"
        exited = subprocess.Popen(["true"])
        exited.wait()
        gone = Worker(id="old", host=me.host, pid=exited.pid, pid_scope=me.pid_scope)
        assert proven_dead(gone, me)
        assert not proven_dead(Worker(id="o", host="other", pid=exited.pid), me)
        assert not proven_dead(
            Worker(id="o", host=me.host, pid=exited.pid, pid_scope="another-namespace"), me
        )
        assert not proven_dead(Worker(id="o", host=me.host, pid=1, pid_scope=me.pid_scope), me)
        # Our own pid under another id is another runtime in this very process.
        assert not proven_dead(Worker(id="o", host=me.host, pid=me.pid, pid_scope=me.pid_scope), me)


@contextlib.asynccontextmanager
async def beating(heartbeat: Heartbeat) -> AsyncIterator[Heartbeat]:
    await heartbeat.start()
    try:
        yield heartbeat
    finally:
        await heartbeat.stop()


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    task = asyncio.create_task(dispatcher.run())
    try:
        yield
    finally:
        await dispatcher.stop(grace=0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Poll `condition` until true; the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def runner(store: Store, registry: Registry, heartbeat: Heartbeat | None = None) -> Dispatcher:
    dispatcher = Dispatcher(store, registry, idle_wait=0.05, timeout=300)
    if heartbeat is not None:
        dispatcher.worker = heartbeat.id
        heartbeat.on_declared_dead = dispatcher.recheck_leases
    return dispatcher


async def _ready(dispatcher: Dispatcher) -> bool:
    """Whether the dispatcher takes deliveries from ingest (after its start-up steps)."""
    taken = dispatcher.reserve(1)
    dispatcher.unreserve(taken)
    return taken == 1


def slow_handler(registry: Registry, runs: list[str], seconds: float) -> None:
    active: list[str] = []

    @registry.on("*", name="h")
    async def handle(event: Event, job: Job) -> None:
        assert not active, "a delivery ran twice at the same time"
        active.append(event.id)
        runs.append(event.id)
        try:
            await asyncio.sleep(seconds)
        finally:
            active.remove(event.id)


class TestHeartbeat:
    """Heartbeats take a dead worker's deliveries over in about the timeout, never a live one's."""

    async def test_a_silent_worker_is_taken_over_after_the_timeout(
        self, make_store: Callable[[], Store]
    ) -> None:
        """A worker that stops beating with a delivery leased (on another host: nothing to
        prove) loses it to a live worker once its heartbeat is older than the timeout."""
        dead_store, live_store = make_store(), make_store()
        await dead_store.open()
        await live_store.open()
        try:
            delivery_id = await pending(live_store, at=now())
            dead = Heartbeat(dead_store, timeout=1.0, worker=worker("dead"))
            await dead.beat()  # registered, then silent: killed
            await dead_store.claim_deliveries(limit=1, lease=330, at=now(), worker=dead.id)
            live = Heartbeat(live_store, timeout=1.0, worker=worker("live"))
            async with beating(live):

                async def claimed() -> bool:
                    return bool(
                        await live_store.claim_deliveries(
                            limit=1, lease=330, at=now(), worker=live.id
                        )
                    )

                took = await wait_for(claimed, timeout=10)
                assert (DeliveryState.RUNNING, 2) == await state_of(live_store, delivery_id)
            assert 0.5 < took < 4, f"taken over after {took:.1f}s with a 1s timeout"
        finally:
            await dead_store.close()
            await live_store.close()

    async def test_what_ingest_claims_on_a_shared_store_goes_with_its_worker(
        self, store: Store
    ) -> None:
        """A delivery committed already claimed by this process's runner carries its worker
        id on PostgreSQL, so declaring the worker dead takes it back; on SQLite, which no
        other process shares, the next start's release does that instead."""
        registry = Registry()
        runs: list[str] = []
        slow_handler(registry, runs, seconds=5)
        heartbeat = Heartbeat(store, timeout=15.0, worker=worker("w-ingest"))
        await heartbeat.beat()
        dispatcher = runner(store, registry, heartbeat)
        ingest = Ingest(store, registry, dispatcher.wake, runner=dispatcher)
        await add_job(store)
        async with running(dispatcher):
            await wait_for(lambda: _ready(dispatcher), timeout=5)
            recorded = await ingest.record(
                Write(
                    update=Update(status=Status.RUNNING, raw_status="processing", progress=0.5),
                    source="callback",
                    job_id="job_1",
                )
            )
            assert [DeliveryState.RUNNING] == [d.state for d in recorded.deliveries]
            reaped = await store.reap_workers(late=False, dead=[heartbeat.id], at=now())
            assert (1 if store.shared else 0) == reaped.deliveries

    async def test_after_an_outage_for_everyone_nobody_is_taken_over(self, store: Store) -> None:
        """When no heartbeat landed for longer than the timeout (the database was away), the
        first worker back does not take the others' work: it has not been steady itself."""
        delivery_id = await pending(store, at=now())
        first = Heartbeat(store, timeout=1.0, worker=worker("first"))
        second = Heartbeat(store, timeout=1.0, worker=worker("second"))
        await first.beat()
        await second.beat()
        await store.claim_deliveries(limit=1, lease=330, at=now(), worker="second")
        await asyncio.sleep(1.3)  # nobody beats: the outage
        await first.beat()
        assert not first.steady
        assert ["first", "second"] == sorted(w.id for w in await store.list_workers())
        assert (DeliveryState.RUNNING, 1) == await state_of(store, delivery_id)
        assert await store.heartbeat("second")

    async def test_a_proven_dead_predecessor_is_taken_over_at_start(self, store: Store) -> None:
        """At start, a worker of this host whose pid is gone is reaped without waiting for its
        heartbeat to be late: a restarted `serve` runs its predecessor's work at once."""
        delivery_id = await pending(store, at=now())
        exited = subprocess.Popen(["true"])
        exited.wait()
        me = this_process()
        predecessor = Worker(id="old", host=me.host, pid=exited.pid, pid_scope=me.pid_scope)
        await store.register_worker(predecessor)
        await store.claim_deliveries(limit=1, lease=330, at=now(), worker="old")
        async with beating(Heartbeat(store, timeout=60.0, worker=me)):
            [claimed] = await store.claim_deliveries(limit=1, lease=330, at=now(), worker=me.id)
            assert ["old"] != [w.id for w in await store.list_workers()]
        assert (delivery_id, 2) == (claimed.delivery.id, claimed.delivery.attempts)
        assert [] == await store.list_workers()  # its own row went at stop

    async def test_a_live_slow_worker_is_never_taken_over(
        self, make_store: Callable[[], Store], registry: Registry
    ) -> None:
        """A handler that runs for several worker timeouts, in a worker that beats, runs once
        while another worker beats and claims beside it."""
        runs: list[str] = []
        slow_handler(registry, runs, 3.5)
        first_store, second_store = make_store(), make_store()
        await first_store.open()
        await second_store.open()
        try:
            first = Heartbeat(first_store, timeout=1.0, worker=worker("first"))
            second = Heartbeat(second_store, timeout=1.0, worker=worker("second"))
            async with (
                beating(first),
                beating(second),
                running(runner(first_store, registry, first)),
                running(runner(second_store, registry, second)),
            ):
                delivery_id = await pending(first_store, at=now())

                async def done() -> bool:
                    return (await state_of(first_store, delivery_id))[0] is DeliveryState.DONE

                await wait_for(done, timeout=10)
            assert 1 == len(runs)
            assert (DeliveryState.DONE, 1) == await state_of(first_store, delivery_id)
        finally:
            await first_store.close()
            await second_store.close()

    async def test_a_worker_declared_dead_stops_its_handler_and_joins_again(
        self, make_store: Callable[[], Store], registry: Registry
    ) -> None:
        """Found declared dead at its next beat, a worker stops the handler whose delivery was
        taken back (so it never runs beside the new run), registers again, and the delivery
        then runs to the end once."""
        runs: list[str] = []
        slow_handler(registry, runs, 1.5)
        store = make_store()
        await store.open()
        try:
            delivery_id = await pending(store, at=now())
            heartbeat = Heartbeat(store, timeout=30.0, worker=worker("stalled"))
            async with beating(heartbeat), running(runner(store, registry, heartbeat)):
                await wait_for(lambda: asyncio.sleep(0, result=bool(runs)), timeout=5)
                # Another process finds it late (its loop stalled, say) and takes its work.
                await store.reap_workers(dead=["stalled"], at=now())
                await heartbeat.beat()

                async def done() -> bool:
                    return (await state_of(store, delivery_id))[0] is DeliveryState.DONE

                await wait_for(done, timeout=10)
                assert ["stalled"] == [w.id for w in await store.list_workers()]
            assert 2 == len(runs)  # the first cut off, the second ran to the end
            assert (DeliveryState.DONE, 2) == await state_of(store, delivery_id)
        finally:
            await store.close()

    async def test_a_worker_cut_off_from_its_heartbeats_stops_a_taken_handler(
        self, store: Store, registry: Registry
    ) -> None:
        """A worker whose heartbeats fail (while its leases still reach the store) checks its
        leases at each failed beat once it is late, and stops the handler another worker
        took over: within a beat, not at the next lease renewal (110 s away)."""
        started: list[str] = []
        stopped: list[float] = []

        @registry.on("*", name="h")
        async def handle(event: Event, job: Job) -> None:
            started.append(event.id)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped.append(time.monotonic())
                raise

        beats = CutOffBeats(store)
        heartbeat = Heartbeat(beats, timeout=1.0, worker=worker("cut"))  # type: ignore[arg-type]
        async with beating(heartbeat), running(runner(store, registry, heartbeat)):
            delivery_id = await pending(store, at=now())
            await wait_for(lambda: asyncio.sleep(0, result=bool(started)), timeout=5)
            beats.cut = True
            await asyncio.sleep(1.2)  # late now: others take its work over
            await store.reap_workers(dead=["cut"], at=now())
            await store.register_worker(worker("other"))
            [taken] = await store.claim_deliveries(limit=1, lease=330, at=now(), worker="other")
            assert delivery_id == taken.delivery.id
            taken_at = time.monotonic()
            await wait_for(lambda: asyncio.sleep(0, result=bool(stopped)), timeout=3)
        assert stopped[0] - taken_at < 1.5
        assert (DeliveryState.RUNNING, 2) == await state_of(store, delivery_id)


class CutOffBeats:
    """The real store, except that every heartbeat fails once `cut` is set."""

    def __init__(self, store: Store):
        self.store = store
        self.cut = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def heartbeat(self, worker_id: str) -> bool:
        if self.cut:
            raise StoreUnavailable("cut off")
        return await self.store.heartbeat(worker_id)


class TestPostgresNeverWaits:
    """On PostgreSQL heartbeats and reaps wait on nobody: not on a row another transaction
    holds (the next reap takes it), not on a pool busy with other work."""

    async def test_a_locked_delivery_is_taken_by_the_next_reap(self, pg_url: str) -> None:
        """A delivery locked at the reap stays running; the dead worker is gone all the same,
        and once the lock is let go the next reap puts the delivery back."""
        store = PostgresStore(pg_url)
        await store.open()
        holder = await asyncpg.connect(pg_url)
        try:
            delivery_id = await pending(store)
            await store.register_worker(worker("dead"))
            await store.claim_deliveries(limit=1, lease=330, at=T0 + 1, worker="dead")
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", delivery_id
                )
                reaped = await asyncio.wait_for(
                    store.reap_workers(dead=["dead"], at=T0 + 2), timeout=5
                )
                assert (["dead"], 0) == (reaped.workers, reaped.deliveries)
            assert (DeliveryState.RUNNING, 1) == await state_of(store, delivery_id)
            reaped = await store.reap_workers(at=T0 + 3)
            assert ([], 1) == (reaped.workers, reaped.deliveries)
            assert (DeliveryState.PENDING, 1) == await state_of(store, delivery_id)
        finally:
            await holder.close()
            await store.close()

    async def test_a_busy_pool_does_not_delay_heartbeats(self, pg_url: str) -> None:
        """Heartbeats have a connection of their own: with every pooled connection taken
        (ingest under load), a worker still beats, and is not declared dead for it."""
        store = PostgresStore(f"{pg_url}?pool_size=1&pool_min=1&pool_timeout=0.5")
        await store.open()
        try:
            await store.register_worker(worker("busy"))
            async with store.pool.acquire():  # the pool's only connection
                assert await asyncio.wait_for(store.heartbeat("busy"), 2)
                reaped = await asyncio.wait_for(store.reap_workers(at=now()), 2)
                assert [] == reaped.workers
        finally:
            await store.close()


class TestWorkerTimeoutSetting:
    """RECEIVER_WORKER_TIMEOUT sets how late a heartbeat may be; a bad value is refused."""

    def test_default_and_override(self, tmp_path: Path) -> None:
        """15 s by default; the variable's value reaches the runtime's heartbeat."""
        url = f"sqlite:///{tmp_path / 'r.db'}"
        assert 15.0 == load_settings({"RECEIVER_DATABASE_URL": url}).worker_timeout
        settings = load_settings({"RECEIVER_DATABASE_URL": url, "RECEIVER_WORKER_TIMEOUT": "6"})
        heartbeat = Runtime.build(settings, handlers=Registry()).heartbeat
        assert (6.0, 2.0, 6.0) == (heartbeat.timeout, heartbeat.interval, heartbeat.worker.timeout)

    @pytest.mark.parametrize("value", ["0", "0.5", "-3", "nan", "soon"])
    def test_bad_values_are_refused(self, value: str) -> None:
        """Under a second, negative, NaN or not a number: one line naming the variable."""
        with pytest.raises(ConfigError, match="RECEIVER_WORKER_TIMEOUT"):
            load_settings({"RECEIVER_WORKER_TIMEOUT": value})
