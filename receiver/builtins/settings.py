"""Settings of the built-in handlers: `[forward]`, `[download]`, `[notify]`, `[command]`.

Each section is a table in `receiver.toml` and a family of `RECEIVER_<SECTION>_<FIELD>`
variables (lists comma-separated, `metadata` as `key=value,key=value`; `RECEIVER_COMMAND`
is the command line, split like a shell would split it but never run by one). Errors
name the setting and never echo a URL or a secret.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import msgspec

from receiver.errors import ConfigError
from receiver.models import Event, Job, Status
from receiver.standard_webhooks import decode_secret
from receiver.urls import http_url

__all__ = [
    "SECTIONS",
    "CommandSettings",
    "DownloadSettings",
    "EventFilter",
    "ForwardSettings",
    "NotifySettings",
    "check_http_url",
    "env_value",
    "metadata_matches",
]

_STATUS_NAMES = frozenset(s.value for s in Status)
_FINAL = ["succeeded", "failed", "cancelled"]
_encode = msgspec.json.encode


def check_http_url(value: str, setting: str) -> None:
    """An absolute http(s) URL with a host; the error names `setting`, never the value."""
    if http_url(value) is None:
        raise ConfigError(f"{setting} must be an absolute http(s) URL")


def metadata_matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether every wanted key has the wanted value; `"7"` also matches the number 7."""
    for key, expected in wanted.items():
        if key not in metadata:
            return False
        actual = metadata[key]
        if actual == expected:
            continue
        spelled = isinstance(expected, str) and not isinstance(actual, str | dict | list)
        if not (spelled and _encode(actual).decode() == expected):
            return False
    return True


class EventFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which events a built-in handler takes: statuses, providers and job metadata."""

    statuses: list[str] | None = None  # None: the handler's own default
    providers: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    def check_filter(self, section: str) -> None:
        from receiver.providers import PROVIDERS

        prefix = f"RECEIVER_{section.upper()}"
        unknown = set(self.statuses or ()) - _STATUS_NAMES - {"*"}
        if unknown:
            raise ConfigError(
                f"{prefix}_STATUSES: unknown status {sorted(unknown)}; use {sorted(_STATUS_NAMES)}"
            )
        unknown = set(self.providers) - set(PROVIDERS)
        if unknown:
            raise ConfigError(f"{prefix}_PROVIDERS: unknown provider {sorted(unknown)}")

    def wanted_statuses(self, default: list[str] | None) -> list[str] | str:
        """The statuses to register for ("*" for all)."""
        chosen = self.statuses if self.statuses is not None else default
        if chosen is None or "*" in chosen:
            return "*"
        return chosen

    def accepts(self, event: Event, job: Job) -> bool:
        """The provider and metadata tests (statuses are the registry's)."""
        if self.providers and event.provider not in self.providers:
            return False
        return metadata_matches(job.metadata, self.metadata)


class ForwardSettings(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """POST each event, signed with Standard Webhooks headers, to every URL in `urls`.

    `secret` (a `whsec_` secret) signs these posts and those to a job's own `notify_url`.
    """

    urls: list[str] = msgspec.field(default_factory=list)
    secret: str | None = None
    timeout: float = 10.0

    def check(self) -> None:
        self.check_filter("forward")
        for url in self.urls:
            check_http_url(url, "RECEIVER_FORWARD_URLS")
        if self.urls and not self.secret:
            raise ConfigError("RECEIVER_FORWARD_SECRET is required with RECEIVER_FORWARD_URLS")
        if self.secret is not None:
            try:
                decode_secret(self.secret)
            except ValueError:
                raise ConfigError(
                    "RECEIVER_FORWARD_SECRET must be a Standard Webhooks secret: whsec_ then"
                    " base64 of at least 16 random bytes"
                ) from None
        if self.timeout <= 0:
            raise ConfigError("RECEIVER_FORWARD_TIMEOUT must be greater than 0")


class DownloadSettings(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """Copy a succeeded job's result (and preview) into `dir` before the provider's URL expires."""

    dir: str | None = None
    max_bytes: int = 2 * 1024**3
    # A type matches an entry equal to it, or starting with an entry that ends in "/".
    content_types: list[str] = msgspec.field(
        default_factory=lambda: ["video/", "image/", "audio/", "application/octet-stream"]
    )
    preview: bool = True
    hosts: list[str] = msgspec.field(default_factory=list)  # empty: any host
    timeout: float = 60.0  # per network operation, not the whole transfer

    def check(self) -> None:
        self.check_filter("download")
        if self.dir is not None and not self.dir.strip():
            raise ConfigError("RECEIVER_DOWNLOAD_DIR must name a directory")
        if self.max_bytes < 1:
            raise ConfigError("RECEIVER_DOWNLOAD_MAX_BYTES must be at least 1")
        if not self.content_types:
            raise ConfigError("RECEIVER_DOWNLOAD_CONTENT_TYPES must name at least one type")
        if self.timeout <= 0:
            raise ConfigError("RECEIVER_DOWNLOAD_TIMEOUT must be greater than 0")


_NOTIFY_FORMATS = ("auto", "slack", "discord")


class NotifySettings(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """A one-line message per final event to a Slack- or Discord-compatible incoming webhook."""

    url: str | None = None
    format: str = "auto"  # auto: discord for discord.com URLs, else slack
    timeout: float = 10.0

    def check(self) -> None:
        self.check_filter("notify")
        if self.url is not None:
            check_http_url(self.url, "RECEIVER_NOTIFY_URL")
        if self.format not in _NOTIFY_FORMATS:
            raise ConfigError(f"RECEIVER_NOTIFY_FORMAT must be one of {', '.join(_NOTIFY_FORMATS)}")
        if self.timeout <= 0:
            raise ConfigError("RECEIVER_NOTIFY_TIMEOUT must be greater than 0")


_PLACEHOLDER = re.compile(r"\{([a-z_]+)(?:\.([A-Za-z0-9_.-]+))?\}")


class CommandSettings(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """Run `argv` (never through a shell) with the event in `EVENT_*` variables and arguments.

    An argument may hold placeholders such as `{job_id}`, `{status}`, `{result_url}` or
    `{metadata.customer}`, each replaced inside that one argument.
    """

    argv: list[str] = msgspec.field(default_factory=list)
    timeout: float = 60.0
    pass_env: list[str] = msgspec.field(default_factory=list)  # variables the program inherits
    cwd: str | None = None

    def check(self) -> None:
        from receiver.builtins.command import FIELDS

        self.check_filter("command")
        if self.timeout <= 0:
            raise ConfigError("RECEIVER_COMMAND_TIMEOUT must be greater than 0")
        if self.argv and _PLACEHOLDER.search(self.argv[0]):
            raise ConfigError("RECEIVER_COMMAND: the program cannot be a placeholder")
        for argument in self.argv:
            for match in _PLACEHOLDER.finditer(argument):
                name, key = match.groups()
                if (name == "metadata" and key) or (name in FIELDS and not key):
                    continue
                raise ConfigError(
                    f"RECEIVER_COMMAND: unknown placeholder {{{match.group(0)[1:-1]}}};"
                    f" use {', '.join(sorted(FIELDS))} or metadata.KEY"
                )


# section name -> (settings type, the field a bare RECEIVER_<SECTION> sets)
SECTIONS: dict[str, tuple[type[EventFilter], str | None]] = {
    "forward": (ForwardSettings, None),
    "download": (DownloadSettings, None),
    "notify": (NotifySettings, None),
    "command": (CommandSettings, "argv"),
}


def env_value(section: str, field: str, text: str) -> Any:
    """A variable's text as the field wants it: lists comma-separated, maps as k=v pairs."""
    if section == "command" and field == "argv":
        try:
            return shlex.split(text)
        except ValueError:
            raise ConfigError("RECEIVER_COMMAND: unbalanced quotes") from None
    if field in ("urls", "statuses", "providers", "content_types", "hosts", "pass_env"):
        return [item.strip() for item in text.split(",") if item.strip()]
    if field == "metadata":
        found: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"RECEIVER_{section.upper()}_METADATA must look like key=value,key=value"
                )
            found[key.strip()] = value.strip()
        return found
    return text
