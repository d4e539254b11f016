"""The `/metrics` route: Prometheus text from receiver.metrics.

It needs a token: the admin token, or `RECEIVER_METRICS_TOKEN`, a scrape-only token to
give Prometheus instead of the admin one.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from receiver.admin_auth import check_bearer
from receiver.metrics import METRICS
from receiver.verify import digest

__all__ = ["METRICS_ROUTES"]

# Litestar appends "; charset=utf-8" to every text/ type: naming it here sent it twice.
CONTENT_TYPE = "text/plain; version=0.0.4"


def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The admin token or RECEIVER_METRICS_TOKEN as a Bearer token; guessing is rate limited."""
    runtime = connection.app.state.runtime
    scrape = runtime.settings.metrics_token
    accepted = [runtime.admin_token_digest, *([digest(scrape)] if scrape else [])]
    check_bearer(connection, accepted, "a metrics or admin token is required")


@get("/metrics", guards=[metrics_guard], include_in_schema=True, media_type=CONTENT_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> Response[str]:
    """Prometheus text format; the delivery, job and spend gauges and the replay count are
    read from the store now."""
    store = request.app.state.runtime.store
    summary = await store.delivery_summary()
    spend: dict[str, float] = {}
    for item in await store.spend():
        spend[item.provider] = spend.get(item.provider, 0.0) + item.cost
    body = METRICS.render(
        summary.counts,
        summary.oldest_pending_at,
        await store.job_counts(),
        spend,
        replays=await store.replay_count(),
    )
    return Response(body, media_type=CONTENT_TYPE)


METRICS_ROUTES = [metrics]
