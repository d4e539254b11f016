"""`forward`: POST the canonical event, signed with Standard Webhooks headers, downstream.

Each configured URL is its own handler (so its own delivery, retries and order), named
by a digest of the URL so a reordered list keeps its pending deliveries. A job's own
`notify_url`, given at submit time, gets the same signed post from one more handler.
`webhook-id` is the event id: the same across retries, so a receiver can drop repeats.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from receiver.builtins.outbound import event_document, post_json
from receiver.builtins.settings import ForwardSettings
from receiver.dispatch import Registry
from receiver.models import Event, Job
from receiver.standard_webhooks import headers_for

if TYPE_CHECKING:
    import httpx

__all__ = ["NOTIFY_URL_HANDLER", "forward_name", "install_forward"]

NOTIFY_URL_HANDLER = "builtin.notify_url"


def forward_name(url: str) -> str:
    """The handler name for one forward URL (a digest: the URL itself may hold a token)."""
    return "builtin.forward." + hashlib.sha256(url.encode()).hexdigest()[:12]


async def send_signed(
    client: httpx.AsyncClient, url: str, secret: str, event: Event, job: Job, timeout: float
) -> None:
    """POST the event document to `url` with `webhook-id`, `-timestamp` and `-signature`."""
    body = event_document(event, job)
    await post_json(client, url, body, headers=headers_for(secret, event.id, body), timeout=timeout)


def install_forward(
    registry: Registry, settings: ForwardSettings, client: httpx.AsyncClient
) -> list[str]:
    """Register one handler per URL, and the per-job `notify_url` one when a secret is set."""
    names: list[str] = []
    secret = settings.secret
    if secret is None:
        return names
    statuses = settings.wanted_statuses(None)
    for url in dict.fromkeys(settings.urls):  # the same URL twice would be sent twice

        async def forward(event: Event, job: Job, _url: str = url) -> None:
            await send_signed(client, _url, secret, event, job, settings.timeout)

        name = forward_name(url)
        registry.on(statuses, when=settings.accepts, name=name)(forward)
        names.append(name)

    async def notify_url(event: Event, job: Job) -> None:
        if job.notify_url:
            await send_signed(client, job.notify_url, secret, event, job, settings.timeout)

    # Every status of a job that asked for it: the per-job URL wants the whole story.
    registry.on("*", when=lambda event, job: bool(job.notify_url), name=NOTIFY_URL_HANDLER)(
        notify_url
    )
    names.append(NOTIFY_URL_HANDLER)
    return names
