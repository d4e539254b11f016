"""Handler registration (`on`), routing, backoff, and the delivery runner on a real store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.dispatch import DeliveryInfo, Dispatcher, Registry, backoff
from receiver.errors import GiveUp, Retry
from receiver.failures import FRAMES, TRACEBACK_CHARS
from receiver.ingest import Ingest
from receiver.models import Delivery, DeliveryState, Event, Job, Status, Update, now
from receiver.registration import BadHandlers, check_handlers
from receiver.store import Claimed, NewJob, Store, Write

T0 = 1_000.0


def make_job(job_id: str = "job_1", *, provider: str = "apiframe", task_id: str = "t-1") -> Job:
    at = time.time()
    return Job(
        id=job_id,
        provider=provider,
        task_id=task_id,
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )


def make_event(status: Status = Status.RUNNING, *, provider: str = "apiframe") -> Event:
    return Event(
        id="evt_1",
        job_id="job_1",
        provider=provider,
        task_id="t-1",
        status=status,
        raw_status=status.value,
        source="callback",
        received_at=T0,
    )


def running(progress: float) -> Update:
    return Update(status=Status.RUNNING, raw_status="processing", progress=progress)


SUCCEEDED = Update(status=Status.SUCCEEDED, raw_status="done", result_url="https://cdn.example/v")


async def add_job(store: Store, job_id: str = "job_1", **kwargs: Any) -> Job:
    job = make_job(job_id, task_id=f"t-{job_id}", **kwargs)
    await store.create_job(NewJob(job=job))
    return job


async def deliveries(store: Store, **kwargs: Any) -> list[Delivery]:
    return await store.list_deliveries(**kwargs)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_dispatcher(dispatcher: Dispatcher) -> Any:
    """Run `dispatcher.run()` as a task for the body of the block, then stop it."""
    task = asyncio.create_task(dispatcher.run())
    try:
        yield task
    finally:
        await dispatcher.stop(grace=1.0)
        try:
            await asyncio.wait_for(task, 2.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def all_finished(store: Store, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await deliveries(store)
        return len(found) == count and all(
            d.state in (DeliveryState.DONE, DeliveryState.DEAD) for d in found
        )

    return check


def first_attempt_made(store: Store) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await deliveries(store)
        return any(d.attempts == 1 and d.state is DeliveryState.PENDING for d in found)

    return check


def fast_dispatcher(store: Store, registry: Registry, **kwargs: Any) -> Dispatcher:
    options: dict[str, Any] = {"retry_base": 0.01, "retry_cap": 0.05, "idle_wait": 0.2}
    return Dispatcher(store, registry, **(options | kwargs))


async def deliver_one(store: Store, registry: Registry, **options: Any) -> Delivery:
    """Record one running event for a new job; run a dispatcher until its delivery has ended."""
    await add_job(store)
    dispatcher = fast_dispatcher(store, registry, **options)
    await Ingest(store, registry, dispatcher.wake).record(
        Write(update=running(0.5), source="callback", job_id="job_1")
    )
    async with running_dispatcher(dispatcher):
        await wait_for(all_finished(store, 1))
    [delivery] = await deliveries(store)
    return delivery


class ClaimAnsweredLate:
    """The real store, but the first claim that takes something answers only once
    `answered` is set: a claim in flight, committed and not yet seen by the dispatcher."""

    def __init__(self, store: Store, answered: asyncio.Event):
        self.store = store
        self.answered = answered
        self.taken = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim_deliveries(self, **options: Any) -> list[Claimed]:
        claimed = await self.store.claim_deliveries(**options)
        if claimed and not self.taken.is_set():
            self.taken.set()
            await self.answered.wait()
        return claimed


class TestOn:
    """`on` registers a handler for the statuses and provider it names."""

    def test_unknown_status_is_refused(self, registry: Registry) -> None:
        """A misspelt status fails at import time, naming it."""
        with pytest.raises(ValueError, match="finished"):
            registry.on("finished")

    def test_returns_the_function_and_names_it(self, registry: Registry) -> None:
        """The decorated function is unchanged and registered under module.qualname."""

        async def handle(event: Event, job: Job) -> None: ...

        assert handle is registry.on("succeeded")(handle)
        assert [f"{__name__}.{handle.__qualname__}"] == list(registry.handlers)

    def test_statuses_by_name_enum_or_list(self, registry: Registry) -> None:
        """A status is given as a string, a Status, or several of them."""

        @registry.on(Status.FAILED)
        async def one(event: Event, job: Job) -> None: ...

        @registry.on(["failed", Status.CANCELLED])
        async def two(event: Event, job: Job) -> None: ...

        names = {h.name.rsplit(".", 1)[1]: h.statuses for h in registry.handlers.values()}
        assert {"one": frozenset({"failed"}), "two": frozenset({"failed", "cancelled"})} == names

    def test_star_matches_every_status(self, registry: Registry) -> None:
        """`*` wants every event."""

        @registry.on("*")
        async def everything(event: Event, job: Job) -> None: ...

        for status in Status:
            assert [f"{__name__}.{everything.__qualname__}"] == registry.route(
                make_event(status), make_job()
            )

    def test_status_and_provider_filters(self, registry: Registry) -> None:
        """Routing picks the handlers whose status and provider match, in registration order."""

        @registry.on("succeeded")
        async def any_success(event: Event, job: Job) -> None: ...

        @registry.on("succeeded", provider="rixapi")
        async def rix_success(event: Event, job: Job) -> None: ...

        @registry.on("*", provider="apiframe")
        async def apiframe_all(event: Event, job: Job) -> None: ...

        def short(names: list[str]) -> list[str]:
            return [n.rsplit(".", 1)[1] for n in names]

        job = make_job()
        succeeded_apiframe = make_event(Status.SUCCEEDED, provider="apiframe")
        succeeded_rixapi = make_event(Status.SUCCEEDED, provider="rixapi")
        running_rixapi = make_event(Status.RUNNING, provider="rixapi")
        assert ["any_success", "apiframe_all"] == short(registry.route(succeeded_apiframe, job))
        assert ["any_success", "rix_success"] == short(registry.route(succeeded_rixapi, job))
        assert [] == registry.route(running_rixapi, job)

    def test_a_layer_routes_like_its_chainmap(self, registry: Registry) -> None:
        """A layered registry routes its own handlers and its parent's, also ones added later,
        in the order (and with the overrides) of the ChainMap it reads."""
        layer = registry.layered()

        @registry.on("succeeded", name="parent_first")
        async def parent_first(event: Event, job: Job) -> None: ...

        @layer.on("*", name="own")
        async def own(event: Event, job: Job) -> None: ...

        @registry.on("*", name="parent_later")
        async def parent_later(event: Event, job: Job) -> None: ...

        @layer.on("failed", name="parent_first")  # the layer's own handler of that name wins
        async def overridden(event: Event, job: Job) -> None: ...

        job = make_job()
        for status in Status:
            event = make_event(status)
            expected = [n for n, h in layer.handlers.items() if h.matches(event, job)]
            assert expected == layer.route(event, job)
        assert ["parent_later", "own"] == layer.route(make_event(Status.SUCCEEDED), job)
        assert ["parent_first", "parent_later", "own"] == layer.route(
            make_event(Status.FAILED), job
        )

    async def test_sync_handler_runs_in_a_thread(self, registry: Registry) -> None:
        """A plain function is called off the event loop's thread."""
        seen: list[int] = []

        @registry.on("*")
        def handle(event: Event, job: Job) -> None:
            seen.append(threading.get_ident())

        [handler] = registry.handlers.values()
        assert not handler.is_async
        await handler.call(
            make_event(), make_job(), DeliveryInfo(id="dlv_1", handler="h", attempt=1), timeout=5
        )
        assert 1 == len(seen)
        assert threading.get_ident() != seen[0]

    async def test_delivery_argument_is_passed_only_when_asked(self, registry: Registry) -> None:
        """A handler with a `delivery` parameter gets the DeliveryInfo; others get two arguments."""
        got: list[Any] = []

        @registry.on("*")
        async def wants(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            got.append(delivery)

        @registry.on("*")
        async def plain(event: Event, job: Job) -> None:
            got.append("plain")

        info = DeliveryInfo(id="dlv_1", handler="h", attempt=2)
        for handler in registry.handlers.values():
            await handler.call(make_event(), make_job(), info, timeout=5)
        assert [info, "plain"] == got


class TestRegistrationCheck:
    """A handler that can never run is refused at start, in one line naming it and the fix."""

    def test_misspelt_status_suggests_the_right_one(self, registry: Registry) -> None:
        """`@on("succeded")` fails where it is written, with a did-you-mean."""
        with pytest.raises(ValueError, match=r"did you mean 'succeeded'\?.*running, succeeded"):
            registry.on("succeded")

    def test_unknown_provider_is_refused(self, registry: Registry) -> None:
        """A misspelt provider is named with the handler and the closest known one."""

        @registry.on("succeeded", provider="apifram")
        async def done(event: Event, job: Job) -> None: ...

        with pytest.raises(BadHandlers) as raised:
            check_handlers(registry, {"apiframe", "rixapi"})
        message = str(raised.value)
        assert f"{__name__}:{done.__qualname__}" in message
        assert "unknown provider 'apifram' (did you mean 'apiframe'?)" in message
        assert "\n" not in message

    def test_every_bad_handler_is_one_line(self, registry: Registry) -> None:
        """While a module loads, a misspelt status is kept, not raised: the check then names
        it and every other bad handler, one line each with its file and line."""
        registry.deferring = True

        @registry.on("succeded")
        async def typo(event: Event, job: Job) -> None: ...

        @registry.on("succeeded", provider="apifram")
        async def elsewhere(event: Event, job: Job) -> None: ...

        @registry.on("*")
        async def fine(event: Event, job: Job) -> None: ...

        @registry.on("failed")
        async def too_few(event: Event) -> None: ...

        registry.deferring = False
        with pytest.raises(BadHandlers) as raised:
            check_handlers(registry.layered(), {"apiframe"})
        lines = str(raised.value).splitlines()
        for func, said in zip((typo, elsewhere, too_few), lines, strict=True):
            where = f"{__file__}, line {func.__code__.co_firstlineno}"
            assert said.startswith(f"handler {__name__}:{func.__qualname__} ({where}): ")
        assert "unknown status 'succeded'" in lines[0]
        assert "unknown provider 'apifram'" in lines[1]
        assert "cannot be called with (event, job)" in lines[2]
        assert f"{__name__}.{typo.__qualname__}" not in registry.handlers  # never registered

    def test_known_and_declared_providers_pass(self, registry: Registry) -> None:
        """Built-in and declared generic providers, and `*` handlers, are accepted."""

        @registry.on("succeeded", provider="acme")
        async def generic(event: Event, job: Job) -> None: ...

        @registry.on("*")
        def anything(event: Event, job: Job, delivery: DeliveryInfo) -> None: ...

        check_handlers(registry, {"apiframe", "acme"})

    @pytest.mark.parametrize(
        ("define", "because"),
        [
            ("async def h(event): ...", "too many positional arguments"),
            ("async def h(event, job, extra): ...", "missing a required argument: 'extra'"),
            ("def h(event, job, *, delivery, more): ...", "missing a required argument: 'more'"),
        ],
    )
    def test_a_signature_that_cannot_take_event_and_job_is_refused(
        self, registry: Registry, define: str, because: str
    ) -> None:
        """A handler that would fail on every call is refused before it gets any."""
        scope: dict[str, Any] = {"__name__": "my_handlers"}
        exec(define, scope)
        registry.on("succeeded")(scope["h"])
        with pytest.raises(BadHandlers, match=because) as raised:
            check_handlers(registry, {"apiframe"})
        assert str(raised.value).startswith(
            "handler my_handlers:h (<string>, line 1): its signature ("
        )


def _parse(text: str) -> int:
    return int(text)  # the failing line the traceback must name


def _nested(depth: int) -> None:
    if depth:
        _nested(depth - 1)
    raise LookupError("deep down")


class TestFailureTraceback:
    """A failing handler's delivery keeps the exception and where it was raised in its code."""

    async def test_async_handler_failure_keeps_file_line_and_frames(
        self, store: Store, registry: Registry
    ) -> None:
        """The first line is the exception; after it, the handler's frames with file and line."""

        @registry.on("running")
        async def parses(event: Event, job: Job) -> None:
            _parse("not a number")

        delivery = await deliver_one(store, registry, max_attempts=1)
        assert delivery.last_error is not None
        first, *trace = delivery.last_error.splitlines()
        assert "ValueError: invalid literal for int() with base 10: 'not a number'" == first
        text = "\n".join(trace)
        assert f'File "{__file__}"' in text
        assert "in parses" in text and "in _parse" in text and "return int(text)" in text
        assert "receiver/dispatch.py" not in text  # the runner's own frames are left out

    async def test_sync_handler_failure_keeps_its_frames_too(
        self, store: Store, registry: Registry
    ) -> None:
        """A handler run in a thread gets the same traceback, from its own frame inward."""

        @registry.on("running")
        def parses_in_a_thread(event: Event, job: Job) -> None:
            _parse("x")

        delivery = await deliver_one(store, registry, max_attempts=1)
        assert delivery.last_error is not None
        trace = delivery.last_error.split("\n", 1)[1]
        assert trace.splitlines()[1].strip().startswith(f'File "{__file__}"')
        assert "in parses_in_a_thread" in trace and "return int(text)" in trace
        assert "threading.py" not in trace and "concurrent" not in trace

    async def test_deep_traceback_is_capped(self, store: Store, registry: Registry) -> None:
        """A deep stack keeps the handler's frame and the innermost ones, within the byte cap."""

        @registry.on("running")
        async def recurses(event: Event, job: Job) -> None:
            _nested(50)

        delivery = await deliver_one(store, registry, max_attempts=1)
        assert delivery.last_error is not None
        assert delivery.last_error.startswith("LookupError: deep down\n")
        trace = delivery.last_error.split("\n", 2)[2]
        assert FRAMES == trace.count('  File "')
        assert "in recurses" in trace and 'raise LookupError("deep down")' in trace
        assert "frames ..." in trace
        assert len(trace) <= TRACEBACK_CHARS


class TestBackoff:
    """Retry delays grow exponentially up to a cap, with jitter between 50% and 100%."""

    @given(st.integers(1, 60), st.floats(0.01, 10.0), st.floats(1.0, 7200.0))
    def test_within_jittered_bounds(self, attempt: int, base: float, cap: float) -> None:
        """Each delay lies in [50%, 100%] of min(cap, base * 2**(attempt-1))."""
        full = min(cap, base * 2 ** (attempt - 1))
        delay = backoff(attempt, base=base, cap=cap)
        assert full * 0.5 <= delay <= full

    def test_doubles_per_attempt(self) -> None:
        """The upper bound doubles each attempt: attempt 4 waits 4-8 times base."""
        delays = [backoff(4, base=1.0, cap=1_000.0) for _ in range(200)]
        assert 4.0 <= min(delays)
        assert max(delays) <= 8.0

    def test_jitter_spreads_delays(self) -> None:
        """Retries of many deliveries do not all fall due at the same instant."""
        delays = {backoff(3, base=1.0, cap=100.0) for _ in range(50)}
        assert 40 < len(delays)

    def test_capped(self) -> None:
        """A late attempt waits at most the cap."""
        delays = [backoff(40, base=1.0, cap=60.0) for _ in range(100)]
        assert 30.0 <= min(delays)
        assert max(delays) <= 60.0

    def test_capped_for_very_many_attempts(self) -> None:
        """Even a huge attempt number gives a capped delay rather than an overflow."""
        assert backoff(2_000, base=1.0, cap=60.0) <= 60.0


class TestRetries:
    """A failing handler is retried with backoff until it succeeds or runs out of attempts."""

    async def test_fails_twice_then_succeeds(self, store: Store, registry: Registry) -> None:
        """Three attempts, one delivery id throughout, and the delivery ends done."""
        infos: list[DeliveryInfo] = []

        @registry.on("running")
        async def flaky(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            infos.append(delivery)
            if len(infos) < 3:
                raise RuntimeError(f"boom {len(infos)}")

        delivery = await deliver_one(store, registry)
        assert (DeliveryState.DONE, 3) == (delivery.state, delivery.attempts)
        assert [delivery.id] * 3 == [i.id for i in infos]
        assert [1, 2, 3] == [i.attempt for i in infos]

    async def test_always_failing_goes_dead(self, store: Store, registry: Registry) -> None:
        """After max_attempts the delivery is dead and keeps the last error."""
        calls: list[int] = []

        @registry.on("running")
        async def broken(event: Event, job: Job) -> None:
            calls.append(1)
            raise RuntimeError(f"boom {len(calls)}")

        delivery = await deliver_one(store, registry, max_attempts=3)
        assert (DeliveryState.DEAD, 3, 3) == (delivery.state, delivery.attempts, len(calls))
        assert delivery.last_error is not None
        assert "RuntimeError: boom 3" in delivery.last_error

    async def test_give_up_is_dead_at_the_first_attempt(
        self, store: Store, registry: Registry
    ) -> None:
        """A handler raising `GiveUp` (or a subclass) is not run again: dead, with its error."""
        calls: list[int] = []

        class Refused(GiveUp):
            pass

        @registry.on("running")
        async def refuses(event: Event, job: Job) -> None:
            calls.append(1)
            raise Refused("that address is private")

        delivery = await deliver_one(store, registry, max_attempts=3)
        assert (DeliveryState.DEAD, 1, 1) == (delivery.state, delivery.attempts, len(calls))
        assert "Refused: that address is private" == delivery.last_error

    async def test_retry_defer_is_honoured(self, store: Store, registry: Registry) -> None:
        """`Retry(defer=...)` sets the wait before the next attempt, instead of the backoff."""
        times: list[float] = []

        @registry.on("running")
        async def later(event: Event, job: Job) -> None:
            times.append(time.monotonic())
            if len(times) == 1:
                raise Retry(defer=0.3)

        delivery = await deliver_one(store, registry)
        assert (DeliveryState.DONE, 2) == (delivery.state, delivery.attempts)
        assert 0.3 <= times[1] - times[0] < 1.5
        assert "handler asked to retry" == delivery.last_error

    async def test_timeout_is_retried(self, store: Store, registry: Registry) -> None:
        """A handler that overruns its timeout is cut off and tried again."""
        calls: list[int] = []

        @registry.on("running")
        async def slow_once(event: Event, job: Job) -> None:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(5)

        delivery = await deliver_one(store, registry, timeout=0.1)
        assert (DeliveryState.DONE, 2) == (delivery.state, delivery.attempts)
        assert "timed out after 0.1s" == delivery.last_error

    async def test_unregistered_handler_is_retried_then_dead(
        self, store: Store, registry: Registry
    ) -> None:
        """A delivery for a handler that is not registered is retried, then dead, naming it."""
        await add_job(store)
        await store.record(
            Write(update=running(0.5), source="callback", job_id="job_1"),
            route=lambda event, job: ["gone.handler"],
        )
        async with running_dispatcher(fast_dispatcher(store, registry, max_attempts=3)):
            await wait_for(all_finished(store, 1))
        [delivery] = await deliveries(store)
        assert (DeliveryState.DEAD, 3) == (delivery.state, delivery.attempts)
        assert delivery.last_error is not None
        assert "gone.handler" in delivery.last_error
        assert "no handler" in delivery.last_error

    async def test_sync_handler_overrunning_its_timeout_is_awaited_not_overlapped(
        self, store: Store, registry: Registry
    ) -> None:
        """A thread past the timeout is waited for: nothing of its job runs beside it."""
        active, overlaps, calls = [0], [0], []

        @registry.on("*")
        def slow(event: Event, job: Job) -> None:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
            time.sleep(0.3)
            calls.append(event.status.value)
            active[0] -= 1

        await add_job(store)
        dispatcher = fast_dispatcher(store, registry, timeout=0.05)
        ingest = Ingest(store, registry, dispatcher.wake)
        await ingest.record(Write(update=running(0.5), source="callback", job_id="job_1"))
        await ingest.record(Write(update=running(0.9), source="callback", job_id="job_1"))
        await dispatcher.drain(timeout=5)
        assert 1 == overlaps[0]
        assert ["running", "running"] == calls
        assert [DeliveryState.DONE] * 2 == [d.state for d in await deliveries(store)]


class TestOrderAndIsolation:
    """A job's events reach each handler in order; failures hold up nothing else."""

    async def test_events_arrive_in_order_despite_a_retry(
        self, store: Store, registry: Registry
    ) -> None:
        """The second event waits while the first is retried, then all arrive in order."""
        seen: list[tuple[str, float | None]] = []

        @registry.on("*")
        async def ordered(event: Event, job: Job) -> None:
            seen.append((event.status.value, event.progress))
            if len(seen) == 1:
                raise RuntimeError("first attempt fails")

        await add_job(store)
        dispatcher = fast_dispatcher(store, registry)
        ingest = Ingest(store, registry, dispatcher.wake)
        for update in (running(0.1), running(0.2), SUCCEEDED):
            await ingest.record(Write(update=update, source="callback", job_id="job_1"))
        async with running_dispatcher(dispatcher):
            await wait_for(all_finished(store, 3))
        assert [
            ("running", 0.1),
            ("running", 0.1),
            ("running", 0.2),
            ("succeeded", None),
        ] == seen

    async def test_failing_handler_blocks_neither_other_handlers_nor_other_jobs(
        self, store: Store, registry: Registry
    ) -> None:
        """While one handler's delivery for job A waits to retry, everything else runs."""
        good: list[tuple[str, float | None]] = []
        bad: list[str] = []

        @registry.on("running")
        async def healthy(event: Event, job: Job) -> None:
            good.append((job.id, event.progress))

        @registry.on("running")
        async def picky(event: Event, job: Job) -> None:
            bad.append(job.id)
            if job.id == "job_a":
                raise Retry(defer=60)

        await add_job(store, "job_a")
        await add_job(store, "job_b")
        dispatcher = fast_dispatcher(store, registry)
        ingest = Ingest(store, registry, dispatcher.wake)
        await ingest.record(Write(update=running(0.1), source="callback", job_id="job_a"))
        await ingest.record(Write(update=running(0.2), source="callback", job_id="job_a"))
        await ingest.record(Write(update=running(0.1), source="callback", job_id="job_b"))

        async def others_done() -> bool:
            return 4 == len(await deliveries(store, state=DeliveryState.DONE))

        async with running_dispatcher(dispatcher):
            await wait_for(others_done)
        assert [("job_a", 0.1), ("job_a", 0.2), ("job_b", 0.1)] == sorted(good)
        assert ["job_a", "job_b"] == sorted(bad)
        picky_a = [
            (d.state, d.attempts)
            for d in await deliveries(store, job_id="job_a")
            if d.handler.endswith("picky")
        ]
        assert [(DeliveryState.PENDING, 1), (DeliveryState.PENDING, 0)] == picky_a

    async def test_waiting_delivery_does_not_make_the_runner_spin(
        self, store: Store, registry: Registry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While a job's later delivery waits behind a deferred one, the runner sleeps."""
        claims: list[float] = []
        claim = store.claim_deliveries

        async def counted(**kwargs: Any) -> Any:
            claims.append(time.monotonic())
            return await claim(**kwargs)

        monkeypatch.setattr(store, "claim_deliveries", counted)

        @registry.on("running")
        async def deferring(event: Event, job: Job) -> None:
            raise Retry(defer=60)

        await add_job(store)
        dispatcher = fast_dispatcher(store, registry, idle_wait=1.0)
        ingest = Ingest(store, registry, dispatcher.wake)
        await ingest.record(Write(update=running(0.1), source="callback", job_id="job_1"))
        await ingest.record(Write(update=running(0.2), source="callback", job_id="job_1"))
        async with running_dispatcher(dispatcher):
            await wait_for(first_attempt_made(store))
            claims.clear()
            await asyncio.sleep(0.3)
        assert len(claims) <= 5, f"{len(claims)} claims in 0.3 s"


class TestDispatcherLifecycle:
    """New work starts at once, and work cut off by a stop or a crash is run after a restart."""

    async def test_drain_runs_everything_due(self, store: Store, registry: Registry) -> None:
        """`drain` returns once every due delivery has run, sync handlers included."""
        seen: list[str] = []

        @registry.on("*")
        def record_sync(event: Event, job: Job) -> None:
            seen.append(event.status.value)

        await add_job(store)
        ingest = Ingest(store, registry)
        await ingest.record(Write(update=running(0.5), source="callback", job_id="job_1"))
        await ingest.record(Write(update=SUCCEEDED, source="callback", job_id="job_1"))
        await fast_dispatcher(store, registry).drain(timeout=5)
        assert ["running", "succeeded"] == seen
        assert [DeliveryState.DONE] * 2 == [d.state for d in await deliveries(store)]

    async def test_drain_waits_for_a_claim_already_in_flight(
        self, store: Store, registry: Registry
    ) -> None:
        """A delivery another claim of the same dispatcher took has run when drain returns.

        Between that claim's commit and its answer, drain's own claim finds nothing (the
        row is taken) and nothing is running yet; that is not "all done".
        """
        seen: list[str] = []

        @registry.on("*")
        async def record(event: Event, job: Job) -> None:
            seen.append(event.status.value)

        await add_job(store)
        await Ingest(store, registry).record(
            Write(update=running(0.5), source="callback", job_id="job_1")
        )
        answered = asyncio.Event()
        slow = ClaimAnsweredLate(store, answered)
        dispatcher = fast_dispatcher(slow, registry)  # type: ignore[arg-type]
        loop_claim = asyncio.create_task(dispatcher.run_once())
        await slow.taken.wait()  # committed, not yet answered
        asyncio.get_running_loop().call_later(0.2, answered.set)
        await dispatcher.drain(timeout=5)
        assert ["running"] == seen
        assert 1 == await loop_claim

    async def test_ingest_wakes_an_idle_dispatcher(self, store: Store, registry: Registry) -> None:
        """A recorded event is delivered at once, not after the idle wait."""
        seen: list[float] = []

        @registry.on("running")
        async def handle(event: Event, job: Job) -> None:
            seen.append(time.monotonic())

        await add_job(store)
        dispatcher = fast_dispatcher(store, registry, idle_wait=30.0)
        ingest = Ingest(store, registry, dispatcher.wake)
        async with running_dispatcher(dispatcher):
            await asyncio.sleep(0.05)  # let it go idle
            started = time.monotonic()
            await ingest.record(Write(update=running(0.5), source="callback", job_id="job_1"))
            await wait_for(all_finished(store, 1), timeout=2.0)
        assert seen[0] - started < 1.0

    async def test_stopped_dispatcher_leaves_work_for_the_next(
        self, store: Store, registry: Registry
    ) -> None:
        """A handler cut off by stop() runs again, same delivery id, under a new dispatcher."""
        started = asyncio.Event()
        calls: list[DeliveryInfo] = []

        @registry.on("running")
        async def long(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            calls.append(delivery)
            if len(calls) == 1:
                started.set()
                await asyncio.sleep(30)

        await add_job(store)
        first = fast_dispatcher(store, registry)
        await Ingest(store, registry, first.wake).record(
            Write(update=running(0.5), source="callback", job_id="job_1")
        )
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(started.wait(), 5)
        await first.stop(grace=0.05)
        await asyncio.wait_for(task, 2)
        [interrupted] = await deliveries(store)
        assert DeliveryState.PENDING == interrupted.state

        async with running_dispatcher(fast_dispatcher(store, registry)):
            await wait_for(all_finished(store, 1))
        [delivery] = await deliveries(store)
        assert DeliveryState.DONE == delivery.state
        assert [delivery.id, delivery.id] == [c.id for c in calls]

    async def test_work_running_when_the_store_closed_is_resumed(
        self, store: Store, registry: Registry, make_store: Callable[[], Store]
    ) -> None:
        """A delivery left running by a dead process runs again on the reopened store: released
        at start on SQLite (one runner per file), after its lease runs out on a shared store."""
        started, release = asyncio.Event(), asyncio.Event()
        calls: list[str] = []

        @registry.on("running")
        async def handle(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            calls.append(delivery.id)
            if len(calls) == 1:
                started.set()
                await release.wait()

        await add_job(store)
        first = Dispatcher(store, registry)
        await Ingest(store, registry, first.wake).record(
            Write(update=running(0.5), source="callback", job_id="job_1")
        )
        assert 1 == await first.run_once()
        await asyncio.wait_for(started.wait(), 5)
        await store.close()  # the process "dies" with the delivery leased
        release.set()
        await first.stop(grace=2)  # the handler returns; its outcome cannot be written

        reopened = make_store()
        await reopened.open()
        try:
            [left] = await reopened.list_deliveries()
            assert DeliveryState.RUNNING == left.state
            if reopened.shared:
                # Another process may still hold it: nothing is taken before the lease ends.
                later = fast_dispatcher(reopened, registry)
                await later.before_start()
                assert 0 == await later.run_once()
                [still] = await reopened.list_deliveries()
                assert DeliveryState.RUNNING == still.state
                await reopened.renew_lease(left.id, lease_until=now() - 1)  # time passes
            async with running_dispatcher(fast_dispatcher(reopened, registry)):
                await wait_for(all_finished(reopened, 1))
            [delivery] = await reopened.list_deliveries()
            assert (DeliveryState.DONE, 2) == (delivery.state, delivery.attempts)
            assert [delivery.id, delivery.id] == calls
        finally:
            await reopened.close()


def handing_over(store: Store, registry: Registry, **options: Any) -> tuple[Dispatcher, Ingest]:
    """A dispatcher and an ingest that hands it deliveries committed already claimed."""
    dispatcher = fast_dispatcher(store, registry, **options)
    return dispatcher, Ingest(store, registry, dispatcher.wake, runner=dispatcher)


def counting_claims(store: Store) -> list[int]:
    """Count the store's claim_deliveries calls that claimed something (a spy; it delegates)."""
    claims: list[int] = []
    claim = store.claim_deliveries

    async def counted(**kwargs: Any) -> Any:
        claimed = await claim(**kwargs)
        if claimed:
            claims.append(len(claimed))
        return claimed

    store.claim_deliveries = counted  # type: ignore[method-assign]
    return claims


class TestHandOver:
    """A delivery the running dispatcher has room for is committed claimed and started at once,
    under the same rules as a claim: order per job and handler, the cap, and the start's release."""

    async def test_new_jobs_delivery_is_committed_claimed_and_run(
        self, store: Store, registry: Registry, backend: str
    ) -> None:
        """No claim round trip on SQLite; PostgreSQL (shared with other workers) claims instead."""
        ran: list[tuple[str, int]] = []

        @registry.on("*")
        async def note(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            ran.append((event.id, delivery.attempt))

        claims = counting_claims(store)
        dispatcher, ingest = handing_over(store, registry)
        async with running_dispatcher(dispatcher):
            await wait_for(lambda: _true(dispatcher._taking))
            new = NewJob(job=make_job("job_new", task_id="t-new"))
            recorded = await ingest.record(Write(update=SUCCEEDED, source="callback", new_job=new))
            await wait_for(all_finished(store, 1))
        [stored] = recorded.deliveries
        if backend == "sqlite":
            assert (DeliveryState.RUNNING, 1) == (stored.state, stored.attempts)
            assert stored.lease_until is not None and stored.lease_until > stored.created_at
            assert [] == claims
        else:
            assert (DeliveryState.PENDING, 0) == (stored.state, stored.attempts)
            assert [1] == claims
        assert [(recorded.event.id, 1)] == ran
        [done] = await deliveries(store)
        assert (DeliveryState.DONE, 1) == (done.state, done.attempts)

    async def test_waits_behind_an_unfinished_earlier_delivery(
        self, store: Store, registry: Registry
    ) -> None:
        """While the job's first delivery waits to retry, the next one is stored pending."""
        seen: list[float | None] = []

        @registry.on("*")
        async def flaky(event: Event, job: Job) -> None:
            seen.append(event.progress)
            if len(seen) == 1:
                raise Retry(defer=0.3)

        await add_job(store)
        dispatcher, ingest = handing_over(store, registry)
        async with running_dispatcher(dispatcher):
            await wait_for(lambda: _true(dispatcher._taking))
            await ingest.record(Write(update=running(0.1), source="callback", job_id="job_1"))
            await wait_for(first_attempt_made(store))
            second = await ingest.record(
                Write(update=running(0.2), source="callback", job_id="job_1")
            )
            assert [DeliveryState.PENDING] == [d.state for d in second.deliveries]
            await wait_for(all_finished(store, 2))
        assert [0.1, 0.1, 0.2] == seen

    async def test_the_cap_holds_for_handed_over_deliveries(
        self, store: Store, registry: Registry
    ) -> None:
        """Ten callbacks at once with room for two: two run, the rest wait pending, all end."""
        active, peak, gate = [0], [0], asyncio.Event()

        @registry.on("*")
        async def blocking(event: Event, job: Job) -> None:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            await gate.wait()
            active[0] -= 1

        dispatcher, ingest = handing_over(store, registry, concurrency=2)
        async with running_dispatcher(dispatcher):
            await wait_for(lambda: _true(dispatcher._taking))
            recorded = await asyncio.gather(
                *(
                    ingest.record(
                        Write(
                            update=SUCCEEDED,
                            source="callback",
                            new_job=NewJob(job=make_job(f"job_{n}", task_id=f"t-{n}")),
                        )
                    )
                    for n in range(10)
                )
            )
            await wait_for(lambda: _true(active[0] == 2))
            await asyncio.sleep(0.2)
            assert 2 == active[0]
            states = [d.state for r in recorded for d in r.deliveries]
            assert 10 == len(states) and states.count(DeliveryState.RUNNING) <= 2
            gate.set()
            await wait_for(all_finished(store, 10))
        assert 2 == peak[0]

    async def test_nothing_is_handed_over_unless_the_dispatcher_runs(
        self, store: Store, registry: Registry
    ) -> None:
        """Before its start (whose release would undo a claim) and after a halt: pending."""

        @registry.on("*")
        async def anything(event: Event, job: Job) -> None: ...

        dispatcher, ingest = handing_over(store, registry)
        before = await ingest.record(
            Write(
                update=SUCCEEDED,
                source="callback",
                new_job=NewJob(job=make_job("job_a", task_id="a")),
            )
        )
        async with running_dispatcher(dispatcher):
            await wait_for(all_finished(store, 1))
        after = await ingest.record(
            Write(
                update=SUCCEEDED,
                source="callback",
                new_job=NewJob(job=make_job("job_b", task_id="b")),
            )
        )
        assert [DeliveryState.PENDING] * 2 == [
            d.state for d in (*before.deliveries, *after.deliveries)
        ]
        assert 0 == dispatcher._busy


async def _true(value: bool) -> bool:
    return value
