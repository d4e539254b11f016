"""AWS Lambda entries: the ingest app behind Mangum, and a scheduled drain.

- `receiver.serverless.handler`: API Gateway (HTTP API v2, or REST) or a function URL
  in front of the receiver's routes. It only ingests: each callback is verified, then
  committed with its deliveries, then acknowledged. No loop runs inside it.
- `receiver.serverless.drain`: run on a schedule (EventBridge, e.g. every minute). It
  takes due polls, then due deliveries, in bounded batches, and stops well before the
  invocation's time runs out; what it leaves stays due for the next run.

Both need PostgreSQL (`RECEIVER_DATABASE_URL=postgresql://...`): Lambda instances share
nothing but the database. RECEIVER_ADMIN_TOKEN must be set, as there is no disk to keep
a generated one on. Configuration is by environment only, as for the container.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, cast

from receiver.config import Settings, load_settings
from receiver.errors import ConfigError
from receiver.models import now

__all__ = ["drain", "drain_once", "handler", "serverless_settings"]

log = logging.getLogger("receiver.serverless")

_DRAIN_BUDGET = 60.0  # seconds a drain may run when the context does not say
_DRAIN_MARGIN = 10.0  # seconds kept back from the invocation's limit
_DRAIN_LIMIT = 500  # deliveries (and polls) at most per drain

_http: Any = None  # the Mangum adapter, built on the first call and reused while warm


def serverless_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, refusing what cannot work on Lambda."""
    settings = load_settings(os.environ if environ is None else environ)
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "serverless needs PostgreSQL: RECEIVER_DATABASE_URL=postgresql://... (not SQLite)"
        )
    if not settings.admin_token:
        raise ConfigError("serverless needs RECEIVER_ADMIN_TOKEN (there is no disk to keep one)")
    return settings


def _loop() -> asyncio.AbstractEventLoop:
    """The invocation's event loop: Lambda's Python runtime sets none, and Mangum needs one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    loop = getattr(_loop, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loop.loop = loop  # type: ignore[attr-defined]
    asyncio.set_event_loop(loop)
    return loop


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry for HTTP: one request in, one response out."""
    global _http
    from mangum import Mangum

    from receiver.app import create_app

    _loop()
    if _http is None:
        app = create_app(serverless_settings(), run_loops=False, preload=False, tune_gc=True)
        # lifespan "auto": each invocation opens the store's pool and closes it again, so no
        # connection outlives a frozen instance (put PgBouncer or RDS Proxy in front).
        _http = Mangum(cast(Any, app), lifespan="auto")  # Litestar's ASGI types are narrower
    answer: dict[str, Any] = _http(event, context)
    return answer


def drain(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, int]:
    """The scheduled Lambda entry: due polls, then due deliveries, within the time left."""
    budget = _DRAIN_BUDGET
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        budget = max(1.0, context.get_remaining_time_in_millis() / 1000 - _DRAIN_MARGIN)
    return _loop().run_until_complete(drain_once(serverless_settings(), budget=budget))


async def drain_once(
    settings: Settings, *, budget: float = _DRAIN_BUDGET, limit: int = _DRAIN_LIMIT
) -> dict[str, int]:
    """Poll what is due and run due deliveries, for at most `budget` seconds and `limit` each.

    Handlers still running when the budget is spent get the rest of it, then are cut off
    and put back to pending for the next drain.
    """
    from receiver.runtime import Runtime

    deadline = now() + budget
    runtime = Runtime.build(settings)
    await runtime.store.open()
    polls = deliveries = 0
    try:
        if runtime.poller.slots is not None:  # creates waiting for a slot that freed since
            await runtime.poller.slots.run_once()
        while polls < limit and now() < deadline:
            taken = await runtime.poller.run_once()
            polls += taken
            if not taken:
                break
        deliveries = await runtime.dispatcher.drain(timeout=max(0.0, deadline - now()), limit=limit)
        await runtime.dispatcher.stop(grace=max(0.0, deadline - now()))
    finally:
        await runtime.client.aclose()
        await runtime.store.close()
    log.info("drain: %d polls, %d deliveries", polls, deliveries)
    return {"polls": polls, "deliveries": deliveries}
