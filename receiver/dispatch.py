"""User handlers: the `on` registry, and the runner that delivers events to them.

Each (event, handler) pair is a delivery row. The runner leases due deliveries, calls
the handler, and marks the row done, schedules a retry with exponential backoff and
jitter, or marks it dead after `handler_max_attempts` (at once when the handler raises
`GiveUp`: no later attempt can succeed). A delivery waits while an
earlier one of the same job and handler is unfinished, so each handler sees a job's
events in order, and a failing handler holds up nothing but its own queue for that job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import inspect
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeVar

import msgspec

from receiver.errors import ConfigError, GiveUp, Retry, StoreUnavailable
from receiver.failures import describe_failure
from receiver.logs import bind
from receiver.loop import WorkLoop
from receiver.metrics import METRICS
from receiver.models import Event, Job, Status, now
from receiver.registration import BadHandlers, BadRegistration, bad_handler, choices, import_failure
from receiver.store.base import Claimed, Store

__all__ = [
    "DeliveryInfo",
    "Dispatcher",
    "Handler",
    "Registry",
    "backoff",
    "load_handlers",
    "on",
    "registry",
]

log = logging.getLogger("receiver.dispatch")

HandlerFunc = Callable[..., Awaitable[Any] | Any]
F = TypeVar("F", bound=HandlerFunc)
_STATUS_NAMES = frozenset(s.value for s in Status)


class DeliveryInfo(msgspec.Struct, frozen=True):
    """Passed to a handler that takes a `delivery` argument; `id` is its idempotency key."""

    id: str
    handler: str
    attempt: int


class Handler(msgspec.Struct, frozen=True):
    """A registered handler function and the events it wants."""

    name: str
    func: HandlerFunc
    statuses: frozenset[str] | None  # None: every status
    provider: str | None
    is_async: bool
    wants_delivery: bool
    # A further test on the event and the job after it (metadata, a per-job URL, ...).
    when: Callable[[Event, Job], bool] | None = None

    def matches(self, event: Event, job: Job | None = None) -> bool:
        if self.provider is not None and self.provider != event.provider:
            return False
        if self.statuses is not None and event.status.value not in self.statuses:
            return False
        return self.when is None or job is None or self.when(event, job)

    async def call(self, event: Event, job: Job, delivery: DeliveryInfo, *, timeout: float) -> None:
        """Run the handler; an async one is cut off after `timeout` (TimeoutError)."""
        kwargs = {"delivery": delivery} if self.wants_delivery else {}
        if self.is_async:
            async with asyncio.timeout(timeout):  # unlike wait_for, no task of its own
                await self.func(event, job, **kwargs)
            return
        # A thread cannot be cut off. Past the timeout we keep waiting for it, so that its
        # retry, or the job's next event, never runs beside it; its own outcome stands.
        thread = asyncio.ensure_future(asyncio.to_thread(self.func, event, job, **kwargs))
        done, _ = await asyncio.wait({thread}, timeout=timeout)
        if not done:
            log.warning("sync handler %s overran %gs; waiting for it to return", self.name, timeout)
        await thread


class Registry:
    """Handlers by name; `on` adds to it."""

    def __init__(self) -> None:
        self.handlers: MutableMapping[str, Handler] = {}
        # While `load_handlers` imports the user's module, a bad `@on(...)` is kept here as
        # its one-line error, and the import goes on, so that every mistake is reported at
        # once (receiver.registration.check_handlers); elsewhere it raises where written.
        self.deferring = False
        self.refused: list[str] = []

    def layered(self) -> Registry:
        """A registry that sees every handler of this one, now and later, plus its own.

        The runtime adds its built-in handlers to such a layer, so they never outlive it
        in a registry shared by several runtimes (the module-level one, in tests).
        """
        layer = Registry()
        layer.handlers = collections.ChainMap({}, self.handlers)
        layer.refused = self.refused
        return layer

    def on(
        self,
        status: str | Status | Sequence[str | Status],
        *,
        provider: str | None = None,
        when: Callable[[Event, Job], bool] | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register `async def handler(event, job)` for a status ("*" for every status).

        `when(event, job)` narrows it further (e.g. on `job.metadata`); `name` replaces the
        default `module.function` name, which deliveries are stored under.
        """
        wanted = [status] if isinstance(status, str | Status) else list(status)
        names = {str(s.value if isinstance(s, Status) else s) for s in wanted}
        if "*" in names:
            statuses = None
        else:
            unknown = sorted(names - _STATUS_NAMES)
            if unknown:
                wrong = unknown[0]
                problem = f"@on({wrong!r}): {choices(wrong, _STATUS_NAMES, 'status')} or '*'"
                if not self.deferring:
                    raise BadRegistration(problem)
                return self._refuse(problem)
            statuses = frozenset(names)

        def register(func: F) -> F:
            handler_name = name or f"{func.__module__}.{func.__qualname__}"
            self.handlers[handler_name] = Handler(
                name=handler_name,
                func=func,
                statuses=statuses,
                provider=provider,
                is_async=inspect.iscoroutinefunction(func),
                wants_delivery="delivery" in inspect.signature(func).parameters,
                when=when,
            )
            return func

        return register

    def _refuse(self, problem: str) -> Callable[[F], F]:
        """A decorator that registers nothing and keeps `problem`, naming the function."""

        def refuse(func: F) -> F:
            self.refused.append(bad_handler(func, problem))
            return func

        return refuse

    def route(self, event: Event, job: Job) -> list[str]:
        """The names of the handlers that want `event`."""
        handlers = self.handlers
        if not isinstance(handlers, collections.ChainMap):
            return [h.name for h in handlers.values() if h.matches(event, job)]
        # A layered registry's maps, walked directly in the ChainMap's own order: iterating
        # the ChainMap builds a merged dict on every call, and this runs for every event.
        seen: set[str] = set()
        wanted = []
        for layer in reversed(handlers.maps):
            for name in layer:
                if name not in seen:
                    seen.add(name)
                    if handlers[name].matches(event, job):
                        wanted.append(name)
        return wanted

    def get(self, name: str) -> Handler | None:
        return self.handlers.get(name)

    def most_routed(self) -> int:
        """How many handlers an event can route to at most (cheap: a layer is not merged)."""
        handlers = self.handlers
        if isinstance(handlers, collections.ChainMap):
            return sum(len(layer) for layer in handlers.maps)
        return len(handlers)


registry = Registry()
on = registry.on


def load_handlers(module: str, *, required: bool = True) -> Registry:
    """Import the user's handler module, registering its `@on` functions; return the registry.

    A module that is not there is a ConfigError when `required`, else nothing: the
    receiver still takes and stores callbacks, and routes them once handlers exist
    (`serve` and `worker` say so: receiver.registration.handlers_warning). A module that
    fails to import is a BadHandlers error of one line: the file and line, and what is wrong.
    """
    if module:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # `receiver serve` finds ./handlers like `python -m` would
        registry.deferring = True
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(f"{exc.name}."):
                # The module exists but imports something missing: the user's to fix.
                raise _with_refused(import_failure(module, exc)) from exc
            if required:
                raise ConfigError(
                    f"RECEIVER_HANDLERS: no module {module!r} found in the working directory"
                    " or on PYTHONPATH; check the name, or set it to '' for no handlers"
                ) from None
        except Exception as exc:
            raise _with_refused(import_failure(module, exc)) from exc
        finally:
            registry.deferring = False
    return registry


def _with_refused(failure: BadHandlers) -> BadHandlers:
    """The import's failure, after the bad registrations met before it (one line each)."""
    if not registry.refused:
        return failure
    return BadHandlers("\n".join([*registry.refused, str(failure)]))


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, with jitter in [50%, 100%]."""
    # The exponent is capped too, so a huge attempt count cannot overflow a float.
    delay: float = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))
    return delay * (0.5 + random.random() / 2)


class Dispatcher(WorkLoop):
    """Runs due deliveries until stopped; `wake()` after a commit starts new ones at once.

    A claimed delivery is leased for `timeout + lease_margin` seconds and the lease is
    renewed while its handler runs, so no other runner takes it over meanwhile; a lease
    left to lapse belongs to a runner that died, and its delivery is run again.
    """

    def __init__(
        self,
        store: Store,
        handlers: Registry,
        *,
        max_attempts: int = 8,
        timeout: float = 300.0,
        concurrency: int = 64,
        retry_base: float = 1.0,
        retry_cap: float = 3600.0,
        idle_wait: float = 1.0,
        lease_margin: float = 30.0,
    ):
        super().__init__(idle_wait=idle_wait)
        self.store = store
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.concurrency = concurrency
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.lease = timeout + lease_margin
        self._running: set[asyncio.Task[None]] = set()
        self._claiming = 0  # claims in flight, whose deliveries are not in _running yet
        # Handlers in progress: the concurrency cap counts these. A delivery whose handler
        # returned frees its slot while its outcome is written (it stays `running`, so no
        # later delivery of its job and handler is claimed before that write commits).
        self._busy = 0
        self._threads: set[asyncio.Task[Any]] = set()  # deliveries inside a sync handler
        self._handling: set[asyncio.Task[Any]] = set()  # deliveries inside their handler
        self._leases: set[_LeaseKeeper] = set()
        # This process's worker id (receiver.heartbeat), stamped on the deliveries it leases.
        self.worker: str | None = None
        self._halted_at: float | None = None
        # Whether ingest may hand deliveries straight to this runner (see `reserve`): only
        # once it runs, and after the start's release, which would undo such a claim.
        self._taking = False

    async def before_start(self) -> None:
        try:
            if self.store.shared:
                # Other workers may hold live leases on this database: a dead worker's
                # deliveries are taken over when its heartbeat stops (receiver.heartbeat)
                # or their leases run out, never by release.
                return
            released = await self.store.release_running()
            if released:
                log.info("resuming %d deliveries interrupted by the last stop", released)
        finally:
            self._taking = True

    def reserve(self, most: int) -> int:
        """Set aside up to `most` free slots for deliveries committed with their claim.

        Ingest stores that many of its new deliveries already claimed (Store.record's
        `claim`), then hands them to `start`, and gives back what it did not use with
        `unreserve`: the handler starts as soon as its event commits.
        """
        if not self._taking or self._stopping:
            return 0
        if self.store.shared and self.worker is None:
            # Other processes' workers take over a dead one's deliveries by its heartbeat:
            # without one, what this process claims would wait for its leases to run out.
            return 0
        taken = max(0, min(most, self.concurrency - self._busy))
        self._busy += taken
        return taken

    def unreserve(self, count: int) -> None:
        if count:
            full = self._busy >= self.concurrency
            self._busy -= count
            if full:
                self.wake()  # it may be waiting for a free slot

    def start(self, claimed: Sequence[Claimed]) -> None:
        """Run deliveries claimed for this runner; their slots are already counted."""
        for item in claimed:
            task = asyncio.create_task(self._deliver(item))
            self._running.add(task)
            task.add_done_callback(self._finished)

    async def next_due(self) -> float | None:
        if self._busy >= self.concurrency:
            return None  # full: a finishing delivery wakes the loop
        return await self.store.next_delivery_at()

    async def run_once(self, most: int | None = None) -> int:
        """Claim and start as many due deliveries as there are free slots (at most `most`)."""
        free = self.concurrency - self._busy
        if most is not None:
            free = min(free, most)
        if free <= 0:
            return 0
        self._claiming += 1
        try:
            claimed = await self.store.claim_deliveries(
                limit=free, lease=self.lease, at=now(), worker=self.worker
            )
        finally:
            self._claiming -= 1
        self._busy += len(claimed)
        self.start(claimed)
        return len(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._threads.discard(task)
        self.wake()  # a finished delivery may unblock the next one of its job

    async def drain(self, *, timeout: float = 30.0, limit: int | None = None) -> int:
        """Run until nothing is due or running (for tests, the CLI and scheduled drains).

        Starts at most `limit` deliveries; returns how many it started.
        """
        deadline = now() + timeout
        total = 0
        while now() < deadline:
            started = 0
            if limit is None or total < limit:
                started = await self.run_once(None if limit is None else limit - total)
            total += started
            if not started and not self._running:
                if not self._claiming:
                    break
                # The loop's own claim is in flight: what it took has not started yet (on
                # PostgreSQL it made this claim skip those rows), so wait to see it start.
                await asyncio.sleep(0.005)
            if self._running:
                await asyncio.wait(set(self._running), timeout=0.05)
        return total

    def halt(self) -> None:
        """Claim nothing more; the shutdown grace counts from the first call."""
        if self._halted_at is None:
            self._halted_at = time.monotonic()
        super().halt()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let running handlers finish within `grace` of `halt`, then cut them off.

        An async handler cut off is cancelled and its delivery given back, pending, with
        the attempt not counted, so the next start runs it. A sync handler cannot be cut
        off: it is waited for (the process could not exit before its thread anyway), and
        its own outcome is recorded.
        """
        self.halt()
        if not self._running:
            return
        halted_at = self._halted_at if self._halted_at is not None else time.monotonic()
        left = max(0.0, halted_at + grace - time.monotonic())
        _, pending = await asyncio.wait(set(self._running), timeout=left)
        if not pending:
            return
        threads = pending & self._threads
        for task in pending - threads:
            task.cancel()
        if threads:
            log.warning(
                "%d sync handler(s) still running after the %gs shutdown grace; waiting for them",
                len(threads),
                grace,
            )
        await asyncio.wait(pending)

    async def recheck_leases(self) -> None:
        """Renew every running delivery's lease now; stop the handlers whose lease is gone.

        Called when this worker finds it was declared dead: its deliveries were put back
        for others, and a handler still running here would run beside their new run.
        """
        await asyncio.gather(*(lease.renew() for lease in list(self._leases)))

    def _lost(self, task: asyncio.Task[Any], delivery_id: str) -> None:
        """A delivery's lease is gone (taken over elsewhere): stop its handler if it runs.

        A sync handler cannot be stopped; its outcome, like any write of a lost lease, is
        fenced by the attempt number and changes nothing.
        """
        log.warning("lost the lease of delivery %s: another worker has it now", delivery_id)
        if task in self._handling and task not in self._threads:
            task.cancel()

    async def _deliver(self, item: Claimed) -> None:
        """Run one claimed delivery, holding its lease, and record the outcome."""
        delivery = item.delivery
        bind(job_id=delivery.job_id, provider=item.job.provider, request_id=delivery.id)
        task = asyncio.current_task()
        assert task is not None  # _deliver always runs as its own task (see `start`)
        lease = _LeaseKeeper(
            self.store,
            delivery.id,
            delivery.attempts,
            self.lease,
            on_lost=functools.partial(self._lost, task, delivery.id),
        )
        self._leases.add(lease)
        self._handling.add(task)
        try:
            started = time.perf_counter()
            try:
                error, defer, gave_up = await self._run_handler(item)
            except asyncio.CancelledError:
                # Cut off at shutdown, or its lease lost: pending again, the attempt not
                # counted (a lost lease's write is fenced and changes nothing). One try only:
                # if the store is down, the next start's release_running gives it back.
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.shield(
                        self.store.release_delivery(
                            delivery.id, at=now(), attempt=delivery.attempts
                        )
                    )
                raise
            finally:
                self._handling.discard(task)
                self._busy -= 1
                self.wake()
            seconds = time.perf_counter() - started
            if error is None:
                await self._record(
                    delivery.id,
                    self.store.finish_delivery,
                    delivery.id,
                    at=now(),
                    attempt=delivery.attempts,
                )
                METRICS.delivery(delivery.handler, "done", seconds)
                return
            if gave_up or delivery.attempts >= self.max_attempts:
                await self._record(
                    delivery.id,
                    self.store.kill_delivery,
                    delivery.id,
                    error=error,
                    at=now(),
                    attempt=delivery.attempts,
                )
                METRICS.delivery(delivery.handler, "dead", seconds)
                log.error(
                    "delivery %s is dead after %d attempts%s",
                    delivery.id,
                    delivery.attempts,
                    " (the handler gave up)" if gave_up else "",
                )
                return
            delay = (
                defer
                if defer is not None
                else backoff(delivery.attempts, base=self.retry_base, cap=self.retry_cap)
            )
            await self._record(
                delivery.id,
                self.store.retry_delivery,
                delivery.id,
                error=error,
                next_attempt_at=now() + delay,
                at=now(),
                attempt=delivery.attempts,
            )
            METRICS.delivery(delivery.handler, "retry", seconds)
        finally:
            lease.release()
            self._leases.discard(lease)

    async def _record(
        self, delivery_id: str, write: Callable[..., Awaitable[None]], *args: Any, **kwargs: Any
    ) -> None:
        """Write a delivery's outcome, retrying while the store is unavailable.

        Retried for as long as the lease holds, so a handler that ran is not run again
        because of a short store fault; past that, the lease lapses and another runner
        takes the delivery over: at least once still holds.
        """
        give_up = time.monotonic() + self.lease
        failures = 0
        while True:
            try:
                await write(*args, **kwargs)
                return
            except StoreUnavailable as exc:
                failures += 1
                if time.monotonic() >= give_up:
                    log.error("could not record the outcome of %s: %s", delivery_id, exc)
                    return
                log.warning("could not record the outcome of %s yet: %s", delivery_id, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def _run_handler(self, item: Claimed) -> tuple[str | None, float | None, bool]:
        """Call the delivery's handler: (error or None, any deferral, whether it gave up)."""
        delivery = item.delivery
        handler = self.handlers.get(delivery.handler)
        if handler is None:
            # A deploy may have renamed it, or loaded other handlers: retried like a failure.
            return f"no handler named {delivery.handler} is registered", None, False
        info = DeliveryInfo(id=delivery.id, handler=delivery.handler, attempt=delivery.attempts)
        # While a sync handler runs, its task is not cancelled at shutdown (see `stop`).
        task = None if handler.is_async else asyncio.current_task()
        if task is not None:
            self._threads.add(task)
        try:
            await handler.call(item.event, item.job, info, timeout=self.timeout)
        except Retry as request:
            return "handler asked to retry", request.defer, False
        except TimeoutError:
            return f"timed out after {self.timeout:g}s", None, False
        except Exception as exc:
            error = describe_failure(exc, handler.func)
            log.warning("handler %s failed on %s: %s", delivery.handler, delivery.id, error)
            return error, None, isinstance(exc, GiveUp)
        finally:
            if task is not None:
                self._threads.discard(task)
        return None, None, False


class _LeaseKeeper:
    """Renews a running delivery's lease every third of its length until released, and
    calls `on_lost` if a renewal finds it gone (the delivery was taken over).

    A timer, not a task per delivery: most handlers return long before the first renewal.
    """

    def __init__(
        self,
        store: Store,
        delivery_id: str,
        attempt: int,
        lease: float,
        on_lost: Callable[[], None] = lambda: None,
    ):
        self.store = store
        self.delivery_id = delivery_id
        self.attempt = attempt
        self.lease = lease
        self.on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(lease / 3, self._due)
        self._renewing: asyncio.Task[None] | None = None

    def _due(self) -> None:
        self._renewing = self._loop.create_task(self.renew())

    async def renew(self) -> None:
        """Renew now; the next renewal is a third of the lease later."""
        try:
            renewed = await self.store.renew_lease(
                self.delivery_id, lease_until=now() + self.lease, attempt=self.attempt
            )
        except StoreUnavailable as exc:
            log.warning("could not renew the lease of %s: %s", self.delivery_id, exc)
            renewed = True  # try again at the next third
        if self._timer is None:
            return  # released meanwhile
        self._timer.cancel()
        self._timer = None
        if renewed:
            self._timer = self._loop.call_later(self.lease / 3, self._due)
        else:
            self.on_lost()

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._renewing is not None:
            self._renewing.cancel()
