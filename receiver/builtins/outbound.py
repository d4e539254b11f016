"""What the built-in handlers share for talking to downstream services.

Requests go out with the runtime's httpx client, a timeout, no redirects (a 3xx is a
failure: a webhook endpoint that moves is misconfigured), and at most a few KiB of the
answer read, so a hostile or broken downstream cannot hold or flood us. Errors name the
downstream by scheme, host and port only: its URL may carry a token.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from receiver.models import Event, Job

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ANSWER_LIMIT",
    "DownstreamError",
    "event_document",
    "origin",
    "post_json",
    "read_capped",
]

ANSWER_LIMIT = 4096  # bytes of a downstream's answer we read, for the error message


class DownstreamError(Exception):
    """A downstream service refused or failed a request; the delivery is retried."""


def origin(url: str | httpx.URL) -> str:
    """`scheme://host:port` of a URL: safe to log, unlike the path, query or userinfo."""
    import httpx

    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}"


async def read_capped(response: httpx.Response, limit: int = ANSWER_LIMIT) -> bytes:
    """The first `limit` bytes of a streamed answer; the rest is never read."""
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return bytes(kept)


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    timeout: float,
) -> int:
    """POST `body` as JSON; return the 2xx status, else raise DownstreamError."""
    import httpx

    sent = {"content-type": "application/json", "user-agent": "receiver", **(headers or {})}
    try:
        async with client.stream(
            "POST", url, content=body, headers=sent, timeout=timeout, follow_redirects=False
        ) as response:
            answer = await read_capped(response)
    except httpx.HTTPError as exc:
        raise DownstreamError(f"{origin(url)} unreachable: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        text = answer[:200].decode("utf-8", "replace").strip()
        detail = f": {text}" if text else ""
        raise DownstreamError(f"{origin(url)} answered {response.status_code}{detail}")
    return response.status_code


def _when(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_document(event: Event, job: Job) -> bytes:
    """The canonical event as sent downstream, in the Standard Webhooks payload shape.

    `{"type": "job.<status>", "timestamp", "data": {"event", "job"}}`; the provider's raw
    body is left out (it is the provider's shape, not ours; `GET /jobs/{id}/events` has it).
    """
    document: dict[str, Any] = {
        "type": f"job.{event.status.value}",
        "timestamp": _when(event.received_at),
        "data": {"event": msgspec.structs.replace(event, payload=None), "job": job},
    }
    return msgspec.json.encode(document)
