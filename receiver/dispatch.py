"""User handlers: the `on` registry, and the runner that delivers events to them.

Each (event, handler) pair is a delivery row. The runner leases due deliveries, calls
the handler, and marks the row done, schedules a retry with exponential backoff and
jitter, or marks it dead after `handler_max_attempts`. A delivery waits while an
earlier one of the same job and handler is unfinished, so each handler sees a job's
events in order, and a failing handler holds up nothing but its own queue for that job.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from receiver.errors import ConfigError, Retry, StoreUnavailable
from receiver.loop import WorkLoop
from receiver.models import Event, Job, Status, now
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

    def matches(self, event: Event) -> bool:
        if self.provider is not None and self.provider != event.provider:
            return False
        return self.statuses is None or event.status.value in self.statuses

    async def call(self, event: Event, job: Job, delivery: DeliveryInfo, *, timeout: float) -> None:
        """Run the handler; an async one is cut off after `timeout` (TimeoutError)."""
        kwargs = {"delivery": delivery} if self.wants_delivery else {}
        if self.is_async:
            await asyncio.wait_for(self.func(event, job, **kwargs), timeout)
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
        self.handlers: dict[str, Handler] = {}

    def on(
        self, status: str | Status | Sequence[str | Status], *, provider: str | None = None
    ) -> Callable[[F], F]:
        """Register `async def handler(event, job)` for a status ("*" for every status)."""
        wanted = [status] if isinstance(status, str | Status) else list(status)
        names = {str(s.value if isinstance(s, Status) else s) for s in wanted}
        if "*" in names:
            statuses = None
        else:
            unknown = names - _STATUS_NAMES
            if unknown:
                raise ValueError(
                    f"unknown status {sorted(unknown)}; use one of {sorted(_STATUS_NAMES)} or '*'"
                )
            statuses = frozenset(names)

        def register(func: F) -> F:
            name = f"{func.__module__}.{func.__qualname__}"
            self.handlers[name] = Handler(
                name=name,
                func=func,
                statuses=statuses,
                provider=provider,
                is_async=inspect.iscoroutinefunction(func),
                wants_delivery="delivery" in inspect.signature(func).parameters,
            )
            return func

        return register

    def route(self, event: Event, job: Job) -> list[str]:
        """The names of the handlers that want `event`."""
        return [h.name for h in self.handlers.values() if h.matches(event)]

    def get(self, name: str) -> Handler | None:
        return self.handlers.get(name)


registry = Registry()
on = registry.on


def load_handlers(module: str, *, required: bool = True) -> Registry:
    """Import the user's handler module, registering its `@on` functions; return the registry.

    A module that is not there is a ConfigError when `required`, else a warning: the
    receiver still takes and stores callbacks, and routes them once handlers exist.
    """
    if module:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # `receiver serve` finds ./handlers like `python -m` would
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(f"{exc.name}."):
                raise  # the module exists but imports something missing: the user's to fix
            if required:
                raise ConfigError(f"RECEIVER_HANDLERS: cannot import module {module!r}") from None
            log.warning("no module %r found: no handlers are registered", module)
    return registry


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, with jitter in [50%, 100%]."""
    # The exponent is capped too, so a huge attempt count cannot overflow a float.
    delay: float = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))
    return delay * (0.5 + random.random() / 2)


class Dispatcher(WorkLoop):
    """Runs due deliveries until stopped; `wake()` after a commit starts new ones at once."""

    def __init__(
        self,
        store: Store,
        handlers: Registry,
        *,
        max_attempts: int = 8,
        timeout: float = 300.0,
        concurrency: int = 16,
        retry_base: float = 1.0,
        retry_cap: float = 3600.0,
        idle_wait: float = 1.0,
    ):
        super().__init__(idle_wait=idle_wait)
        self.store = store
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.concurrency = concurrency
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._running: set[asyncio.Task[None]] = set()

    async def before_start(self) -> None:
        released = await self.store.release_running()
        if released:
            log.info("resuming %d deliveries interrupted by the last stop", released)

    async def next_due(self) -> float | None:
        if len(self._running) >= self.concurrency:
            return None  # full: a finishing delivery wakes the loop
        return await self.store.next_delivery_at()

    async def run_once(self) -> int:
        """Claim and start as many due deliveries as there are free slots; return how many."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        claimed = await self.store.claim_deliveries(limit=free, lease=self.timeout + 30.0, at=now())
        for item in claimed:
            task = asyncio.create_task(self._deliver(item))
            self._running.add(task)
            task.add_done_callback(self._finished)
        return len(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self.wake()  # a finished delivery may unblock the next one of its job

    async def drain(self, *, timeout: float = 30.0) -> None:
        """Run until nothing is due or running (for tests, the CLI and scheduled drains)."""
        deadline = now() + timeout
        while now() < deadline:
            started = await self.run_once()
            if not started and not self._running:
                return
            if self._running:
                await asyncio.wait(set(self._running), timeout=0.05)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let running handlers finish within `grace`, then cancel them."""
        await super().stop(grace)
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _deliver(self, item: Claimed) -> None:
        """Run one claimed delivery and record its outcome: done, a retry later, or dead."""
        delivery = item.delivery
        try:
            error, defer = await self._run_handler(item)
            if error is None:
                await self.store.finish_delivery(delivery.id, at=now())
                return
            if delivery.attempts >= self.max_attempts:
                await self.store.kill_delivery(delivery.id, error=error, at=now())
                log.error("delivery %s is dead after %d attempts", delivery.id, delivery.attempts)
                return
            delay = (
                defer
                if defer is not None
                else backoff(delivery.attempts, base=self.retry_base, cap=self.retry_cap)
            )
            await self.store.retry_delivery(
                delivery.id, error=error, next_attempt_at=now() + delay, at=now()
            )
        except StoreUnavailable as exc:
            # The lease runs out and the delivery is claimed again: at least once still holds.
            log.warning("could not record the outcome of %s: %s", delivery.id, exc)

    async def _run_handler(self, item: Claimed) -> tuple[str | None, float | None]:
        """Call the delivery's handler: (None, None) on success, else the error and any deferral."""
        delivery = item.delivery
        handler = self.handlers.get(delivery.handler)
        if handler is None:
            # A deploy may have renamed it, or loaded other handlers: retried like a failure.
            return f"no handler named {delivery.handler} is registered", None
        info = DeliveryInfo(id=delivery.id, handler=delivery.handler, attempt=delivery.attempts)
        try:
            await handler.call(item.event, item.job, info, timeout=self.timeout)
        except Retry as request:
            return "handler asked to retry", request.defer
        except TimeoutError:
            return f"timed out after {self.timeout:g}s", None
        except asyncio.CancelledError:
            # Cut off at shutdown: pending again, so the next start runs it.
            await asyncio.shield(
                self.store.retry_delivery(
                    delivery.id, error="interrupted by shutdown", next_attempt_at=now(), at=now()
                )
            )
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("handler %s failed on %s: %s", delivery.handler, delivery.id, error)
            return error, None
        return None, None
