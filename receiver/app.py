"""The receiver's ASGI app: the lifespan, the hook routes, and the framework beside them.

Only what a provider's callback needs is imported to start: every path under /hooks/ is
answered in raw ASGI (receiver.hooks), refusals included, and never loads the framework.
Everything else goes to the Litestar app in receiver.framework, which is imported in a
background thread as the app starts, so a cold start takes its first callback without
waiting for the framework. A request that needs the framework before it is ready waits
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING

from receiver.asgi import ASGIApp, Receive, Scope, Send
from receiver.config import Settings, load_settings
from receiver.dispatch import Registry
from receiver.hooks import Hooks
from receiver.runtime import Runtime
from receiver.store import Store

if TYPE_CHECKING:
    import httpx

__all__ = ["ReceiverApp", "create_app", "tune_collector"]

log = logging.getLogger("receiver")


class ReceiverApp:
    """The ASGI app `create_app` returns. `state.runtime` is the running receiver's parts."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        run_loops: bool,
        owns_client: bool,
        preload: bool = True,
        tune_gc: bool = False,
    ):
        self.runtime = runtime
        self.state = SimpleNamespace(runtime=runtime)
        self.hooks = Hooks(runtime)
        self.run_loops = run_loops
        self.owns_client = owns_client
        self.preload = preload
        self.tune_gc = tune_gc
        self._framework: ASGIApp | None = None
        self._loading: asyncio.Future[ASGIApp] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.hooks.takes(scope):
            await self.hooks(scope, receive, send)
            return
        framework = self._framework or await self.framework()
        await framework(scope, receive, send)

    async def framework(self) -> ASGIApp:
        """The Litestar app, loading it now if the start has not already."""
        if self._framework is None:
            if self._loading is None or self._loading.cancelled():
                self._loading = asyncio.ensure_future(self._load())
            self._framework = await asyncio.shield(self._loading)
        return self._framework

    async def _load(self) -> ASGIApp:
        # In a thread, so the loop goes on answering callbacks meanwhile: importing and
        # building the app took 50 to 80 ms, a pause every connection would have felt.
        framework = await asyncio.to_thread(_build_framework, self.runtime)
        if self.tune_gc:
            tune_collector()
        return framework

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start and stop the receiver without a server (in-process drivers, tests)."""
        await self._start()
        try:
            yield
        finally:
            await self._stop()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        if await _lifespan_step("startup", self._start, send):
            await receive()  # lifespan.shutdown
            await _lifespan_step("shutdown", self._stop, send)

    async def _start(self) -> None:
        runtime = self.runtime
        await runtime.store.open()
        runtime.answers.start()
        if self.run_loops:
            await runtime.start_heartbeat()
            await runtime.store.listen(runtime.wakers())
            self._tasks = [
                asyncio.create_task(runtime.dispatcher.run(), name="dispatcher"),
                asyncio.create_task(runtime.poller.run(), name="poller"),
                asyncio.create_task(runtime.pruner.run(), name="pruner"),
            ]
        if self.preload and self._framework is None and self._loading is None:
            self._loading = asyncio.ensure_future(self._load())

    async def _stop(self) -> None:
        runtime = self.runtime
        # Handlers get RECEIVER_SHUTDOWN_GRACE, counted from when the server began to stop.
        grace = runtime.settings.shutdown_grace
        await runtime.poller.stop(grace)
        await runtime.dispatcher.stop(grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await runtime.heartbeat.stop()
        await runtime.answers.stop()  # the last answers, after the server stopped taking them
        if self._loading is not None and not self._loading.done():
            # Its import thread finishes by itself; a later start (Mangum's next) loads again.
            self._loading.cancel()
            self._loading = None
        if self.owns_client:
            await runtime.client.aclose()
        await runtime.store.close()


def _build_framework(runtime: Runtime) -> ASGIApp:
    module = importlib.import_module("receiver.framework")
    framework: ASGIApp = module.build_framework(runtime)
    return framework


async def _lifespan_step(step: str, action: Callable[[], Awaitable[None]], send: Send) -> bool:
    """Run a lifespan step and tell the server how it went; False when it failed."""
    try:
        await action()
    except Exception as exc:
        log.error("%s failed: %s: %s", step, type(exc).__name__, exc)
        await send({"type": f"lifespan.{step}.failed", "message": type(exc).__name__})
        return False
    await send({"type": f"lifespan.{step}.complete"})
    return True


# Collect the youngest objects when 10,000 more are alive, not 700: nearly everything a
# request makes is freed by reference counting, so under load the default ran 300
# collections a second for little (about 4% of the CPU, measured with gc.callbacks).
_GC_THRESHOLDS = (10_000, 10, 10)


def tune_collector() -> None:
    """Tune the cyclic garbage collector for a long-running server, once it has started.

    What exists now (modules, routes, settings) lives as long as the process, so it is
    frozen: full collections stop walking it. Under load they took up to 25 ms each, the
    slowest acknowledgements of the benchmark (see docs/performance.md). It is not collected
    first: that alone paused the loop 25 to 30 ms, for the little garbage a start leaves.
    """
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    handlers: Registry | None = None,
    client: httpx.AsyncClient | None = None,
    run_loops: bool = True,
    preload: bool = True,
    tune_gc: bool = False,
) -> ReceiverApp:
    """Build the receiver. With `run_loops`, the dispatcher, poller and pruner run inside it.

    With `preload` (the default) the framework is imported as the app starts; without it,
    on the first request that needs it (a serverless function that mostly takes callbacks).
    With `tune_gc`, for a process that is the receiver alone (`receiver serve`), the
    garbage collector is tuned for a server once the framework is built (`tune_collector`).
    """
    settings = settings or load_settings()
    runtime = Runtime.build(settings, store=store, handlers=handlers, client=client)
    return ReceiverApp(
        runtime,
        run_loops=run_loops,
        owns_client=client is None,
        preload=preload,
        tune_gc=tune_gc,
    )
