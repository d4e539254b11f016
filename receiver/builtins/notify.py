"""`notify`: one short line per event to a Slack- or Discord-compatible incoming webhook.

Slack (and Mattermost, Rocket.Chat, Google Chat...) take `{"text": ...}`; Discord takes
`{"content": ...}` of at most 2000 characters. By default only final states are sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from receiver.builtins.outbound import post_json
from receiver.builtins.settings import NotifySettings
from receiver.dispatch import Registry
from receiver.models import Event, Job

if TYPE_CHECKING:
    import httpx

__all__ = ["NOTIFY_HANDLER", "install_notify", "message", "notify_body"]

NOTIFY_HANDLER = "builtin.notify"
_LIMIT = 1900  # under Discord's 2000


def message(event: Event, job: Job) -> str:
    """`job job_01… (apiframe) succeeded: https://…` or `… failed: reason`."""
    label = job.metadata.get("name") or job.id
    text = f"job {label} ({job.provider}) {event.status.value}"
    if event.progress is not None and not event.status.terminal:
        text += f" {event.progress:.0%}"
    if event.status.value == "succeeded":
        detail = event.result_url or job.result_url
    else:
        detail = event.error
    if detail:
        text += f": {detail}"
    return text[:_LIMIT]


def notify_body(url: str, style: str, text: str) -> bytes:
    """The JSON body for this kind of incoming webhook."""
    if style == "auto":
        host = urlsplit(url).hostname or ""
        style = "discord" if host.endswith(("discord.com", "discordapp.com")) else "slack"
    key = "content" if style == "discord" else "text"
    return msgspec.json.encode({key: text})


def install_notify(
    registry: Registry, settings: NotifySettings, client: httpx.AsyncClient
) -> list[str]:
    """Register the handler when `RECEIVER_NOTIFY_URL` is set."""
    url = settings.url
    if not url:
        return []

    async def notify(event: Event, job: Job) -> None:
        body = notify_body(url, settings.format, message(event, job))
        await post_json(client, url, body, timeout=settings.timeout)

    statuses = settings.wanted_statuses(["succeeded", "failed", "cancelled"])
    registry.on(statuses, when=settings.accepts, name=NOTIFY_HANDLER)(notify)
    return [NOTIFY_HANDLER]
