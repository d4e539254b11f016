"""The web framework's side of the receiver: a Litestar app with every route that is not
a hook route (admin API, sandbox, dashboard, metrics, health, the schema), and the error
answers.

The hook routes are raw ASGI (receiver.hooks) and never come here. receiver.app loads this
module in the background after start, so a cold start can take callbacks before the
framework is imported.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from receiver.api import ADMIN_ROUTES, OPEN_ROUTES, document_errors
from receiver.errors import StoreUnavailable
from receiver.runtime import Runtime
from receiver.sandbox import SANDBOX_ROUTES
from receiver.scrape import METRICS_ROUTES
from receiver.ui import UI_ROUTER
from receiver.verify import redact_path

__all__ = ["build_framework"]

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


def build_framework(runtime: Runtime) -> Litestar:
    """The Litestar app over `runtime`; its lifespan is receiver.app's, so it has none."""
    app = Litestar(
        route_handlers=[
            *ADMIN_ROUTES,
            *SANDBOX_ROUTES,
            *OPEN_ROUTES,
            *METRICS_ROUTES,
            UI_ROUTER,
        ],
        exception_handlers={
            StoreUnavailable: _store_unavailable,
            HTTPException: _http_error,
            RecursionError: _undecodable,
            UnicodeDecodeError: _undecodable,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="receiver", version="0.1.0", path="/schema"),
        request_max_body_size=runtime.settings.max_body_bytes,
        debug=False,
        logging_config=None,  # logging is the host's to configure (the CLI does it)
    )
    app.state.runtime = runtime
    return app
