"""`notify`: one short line per event to a Slack- or Discord-compatible incoming webhook.

Slack (and Mattermost, Rocket.Chat, Google Chat...) take `{"text": ...}`; Discord takes
`{"content": ...}` of at most 2000 characters. By default only final states are sent.

The provider's text (its error, its result URL) and the job's `name` are written so
that they cannot act as the chat's markup: no mention (`@everyone`, `<!channel>`,
`<@id>`) and no disguised link (`<http://x|click>`, `[click](http://x)`), on one line.
Discord is also told to ping nobody (`allowed_mentions`), whatever the text says.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from receiver.builtins.outbound import post_json
from receiver.builtins.settings import NotifySettings
from receiver.dispatch import Registry
from receiver.models import Event, Job

if TYPE_CHECKING:
    import httpx

__all__ = ["NOTIFY_HANDLER", "chat_style", "install_notify", "message", "neutral", "notify_body"]

NOTIFY_HANDLER = "builtin.notify"
_LIMIT = 1900  # under Discord's 2000
_ZWSP = "\u200b"  # breaks a mention or a link's syntax and shows nothing
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Plain-text broadcasts: Discord's, and Mattermost's and Rocket.Chat's behind a Slack URL.
_BROADCAST = re.compile(r"@(?=(?:everyone|here|channel|all)\b)", re.IGNORECASE)
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# A URL is left as it is (an escape inside would break the link it shows); it ends at any
# character that could start markup, which is then escaped like the rest.
_DISCORD_URL = re.compile(r"https?://[^\s<>\[\]()|*`\\]+")
_DISCORD_MARKUP = re.compile(r"([\\*_~`|\[\]<>])")


def chat_style(url: str, style: str) -> str:
    """`slack` or `discord`: `auto` takes discord for discord.com URLs, else slack."""
    if style != "auto":
        return style
    host = urlsplit(url).hostname or ""
    return "discord" if host.endswith(("discord.com", "discordapp.com")) else "slack"


def _discord_escaped(text: str) -> str:
    parts: list[str] = []
    start = 0
    for url in _DISCORD_URL.finditer(text):
        parts.append(_DISCORD_MARKUP.sub(r"\\\1", text[start : url.start()]))
        parts.append(url.group(0))
        start = url.end()
    parts.append(_DISCORD_MARKUP.sub(r"\\\1", text[start:]))
    return "".join(parts)


def neutral(text: str, style: str) -> str:
    """`text` shown as it is in the `style` chat, on one line, never as markup."""
    text = _BROADCAST.sub("@" + _ZWSP, _LINE_BREAKS.sub(" ", text))
    if style == "discord":
        return _discord_escaped(text)
    # Slack's own control characters; a Markdown link (Mattermost) loses its `](`.
    return text.translate(_SLACK_ESCAPES).replace("](", "]" + _ZWSP + "(")


def message(event: Event, job: Job, style: str = "slack") -> str:
    """`job job_01… (apiframe) succeeded: https://…` or `… failed: reason`."""
    name = job.metadata.get("name")
    label = neutral(str(name), style) if name else job.id
    text = f"job {label} ({job.provider}) {event.status.value}"
    if event.progress is not None and not event.status.terminal:
        text += f" {event.progress:.0%}"
    if event.status.value == "succeeded":
        detail = event.result_url or job.result_url
    else:
        detail = event.error
    if detail:
        text += f": {neutral(detail, style)}"
    return text[:_LIMIT]


def notify_body(style: str, text: str) -> bytes:
    """The JSON body for this kind of incoming webhook (Discord's pings nobody)."""
    body: dict[str, Any]
    if style == "discord":
        body = {"content": text, "allowed_mentions": {"parse": []}}
    else:
        body = {"text": text}
    return msgspec.json.encode(body)


def install_notify(
    registry: Registry, settings: NotifySettings, client: httpx.AsyncClient
) -> list[str]:
    """Register the handler when `RECEIVER_NOTIFY_URL` is set."""
    url = settings.url
    if not url:
        return []
    style = chat_style(url, settings.format)

    async def notify(event: Event, job: Job) -> None:
        body = notify_body(style, message(event, job, style))
        await post_json(client, url, body, timeout=settings.timeout)

    statuses = settings.wanted_statuses(["succeeded", "failed", "cancelled"])
    registry.on(statuses, when=settings.accepts, name=NOTIFY_HANDLER)(notify)
    return [NOTIFY_HANDLER]
