"""The Litestar app factory: routes, error answers, and a lifespan that runs the loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from receiver.api import ADMIN_ROUTES, OPEN_ROUTES, document_errors
from receiver.config import Settings, load_settings
from receiver.dispatch import Registry
from receiver.errors import StoreUnavailable
from receiver.fastpath import FastHooks
from receiver.hooks import HOOK_ROUTES
from receiver.metrics import METRICS_ROUTES
from receiver.runtime import Runtime
from receiver.sandbox import SANDBOX_ROUTES
from receiver.store import Store
from receiver.ui import UI_ROUTER
from receiver.verify import redact_path

__all__ = ["create_app"]

document_errors(METRICS_ROUTES)  # its guard answers 401 as the admin guard does

log = logging.getLogger("receiver")


def _store_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    # The one place a 503 is built: a provider seeing it retries after Retry-After.
    log.warning("store unavailable on %s: %s", redact_path(request.scope["path"]), exc)
    runtime: Runtime = request.app.state.runtime
    return Response(
        {"error": "store unavailable, retry later"},
        status_code=503,
        headers={"Retry-After": str(runtime.settings.retry_after)},
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    content: dict[str, Any] = {"error": exc.detail}
    if exc.extra:
        content["extra"] = exc.extra
    return Response(content, status_code=exc.status_code, headers=exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    # Logged for the operator (the path's token redacted); the caller learns nothing.
    path = redact_path(request.scope["path"])  # request.url fails on a non-UTF-8 query
    log.error("unexpected error on %s %s", request.method, path, exc_info=exc)
    return Response({"error": "internal error"}, status_code=500)


def _undecodable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    # A body too deeply nested or with broken UTF-8 inside a string is the caller's fault.
    return Response({"error": "bad request"}, status_code=400)


class _ReceiverApp(Litestar):
    """Litestar, with the static-secret hook route served by receiver.fastpath before routing."""

    fast: FastHooks | None = None

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        fast = self.fast
        route = fast.route(scope) if fast is not None else None  # type: ignore[arg-type]
        if route is None or fast is None:
            await super().__call__(scope, receive, send)
            return
        await fast.handle(route, scope, receive, send, super().__call__)  # type: ignore[arg-type]


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    handlers: Registry | None = None,
    client: httpx.AsyncClient | None = None,
    run_loops: bool = True,
) -> Litestar:
    """Build the receiver. With `run_loops`, the dispatcher and poller run inside the app."""
    settings = settings or load_settings()
    runtime = Runtime.build(settings, store=store, handlers=handlers, client=client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.store.open()
        tasks: list[asyncio.Task[None]] = []
        if run_loops:
            await runtime.store.listen(runtime.wakers())
            tasks = [
                asyncio.create_task(runtime.dispatcher.run(), name="dispatcher"),
                asyncio.create_task(runtime.poller.run(), name="poller"),
            ]
        try:
            yield
        finally:
            # Handlers get RECEIVER_SHUTDOWN_GRACE, counted from when the server began to stop.
            grace = runtime.settings.shutdown_grace
            await runtime.poller.stop(grace)
            await runtime.dispatcher.stop(grace)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if client is None:
                await runtime.client.aclose()
            await runtime.store.close()

    app = _ReceiverApp(
        route_handlers=[
            *HOOK_ROUTES,
            *ADMIN_ROUTES,
            *SANDBOX_ROUTES,
            *OPEN_ROUTES,
            *METRICS_ROUTES,
            UI_ROUTER,
        ],
        lifespan=[lifespan],
        exception_handlers={
            StoreUnavailable: _store_unavailable,
            HTTPException: _http_error,
            RecursionError: _undecodable,
            UnicodeDecodeError: _undecodable,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="receiver", version="0.1.0", path="/schema"),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,  # logging is the host's to configure (the CLI does it)
    )
    app.state.runtime = runtime
    app.fast = FastHooks(runtime)
    return app
