"""Logging: JSON lines for machines, readable lines for people, secrets scrubbed from both.

Every record carries the request id, job id and provider of the work it was logged in
(context variables bound by the hook routes, the dispatcher and the poller). The format
is JSON when stderr is not a terminal, text when it is; `RECEIVER_LOG_FORMAT` forces
either. Before a line is written, hook tokens in paths, credentials in query strings,
Bearer tokens, secret headers and every configured secret are replaced.

The hot path logs one line per callback at INFO: off by default (the level is WARNING),
on with `RECEIVER_LOG_LEVEL=INFO`, and costs one level check when off.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import msgspec

from receiver.verify import REDACTED, SECRET_HEADERS, redact_path, redact_query

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "Redactor",
    "TextFormatter",
    "bind",
    "cli_log",
    "configure",
    "configured",
    "current",
    "held",
    "make_handler",
    "release",
]

# What the `receiver` command itself says on stderr ("serving on ...", warnings, the
# error it stops on) once a long-running command has configured logging.
cli_log = logging.getLogger("receiver.cli")
_configured = False

_FIELDS = ("request_id", "job_id", "provider")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"receiver_{name}", default=None) for name in _FIELDS
}


def bind(
    *, request_id: str | None = None, job_id: str | None = None, provider: str | None = None
) -> None:
    """Attach ids to every record logged from here on in this task (None leaves one as is)."""
    for name, value in (("request_id", request_id), ("job_id", job_id), ("provider", provider)):
        if value is not None:
            _context[name].set(value)


def current(name: str) -> str | None:
    """The bound value of `request_id`, `job_id` or `provider`."""
    return _context[name].get()


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (a value given in `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in _FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, _context[name].get())
        return True


_HOOK_IN_TEXT = re.compile(r"/hooks/[^/\s?\"']+/[^/\s?\"']+")
_QUERY_IN_TEXT = re.compile(r"\?[^\s\"']+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_HEADER_IN_TEXT = re.compile(
    r"(?i)\b("
    # Any spelling of a secret header: `x_webhook_secret` as well as `X-Webhook-Secret`.
    + "|".join(re.escape(h).replace(r"\-", "[-_]") for h in sorted(SECRET_HEADERS))
    + r")(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"
)
_WHSEC = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")


class Redactor:
    """Scrubs credentials from text: by shape, and every secret it was told about."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = _HOOK_IN_TEXT.sub(lambda m: redact_path(m.group(0)), text)
        text = _QUERY_IN_TEXT.sub(lambda m: "?" + redact_query(m.group(0)[1:]), text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        text = _HEADER_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _WHSEC.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound ids, any traceback."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = self.redact(str(value))
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        return msgspec.json.encode(entry).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message  request=… job=… provider=…`, for a terminal."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{short}={getattr(record, name)}"
            for name, short in (
                ("request_id", "request"),
                ("job_id", "job"),
                ("provider", "provider"),
            )
            if getattr(record, name, None) is not None
        ]
        return self.redact(line + ("  " + " ".join(ids) if ids else ""))


def make_handler(
    fmt: str = "auto", *, stream: IO[str] | None = None, secrets: Iterable[str | None] = ()
) -> logging.Handler:
    """A handler writing `fmt` (json, text, or auto: text on a terminal) to `stream`."""
    stream = stream or sys.stderr
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        fmt = "text" if isatty is not None and isatty() else "json"
    redact = Redactor(secrets)
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    return handler


def configure(level: str, fmt: str = "auto", *, secrets: Iterable[str | None] = ()) -> None:
    """Send the receiver's and uvicorn's logs to stderr in `fmt`, at `level` and above."""
    handler = make_handler(fmt, secrets=secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # "serving on ..." and its like are INFO, yet shown at the default WARNING level:
    # an operator needs them; only ERROR or CRITICAL silence them.
    quiet = root.level > logging.WARNING
    cli_log.setLevel(root.level if quiet else min(logging.INFO, root.level))
    global _configured
    _configured = True
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True


def configured() -> bool:
    """Whether `configure` ran in this process (so CLI messages go through the log format)."""
    return _configured


class _Holder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held() -> Iterator[list[logging.LogRecord]]:
    """Keep what is logged in the block, for `release` once `configure` knows the format.

    Settings are read (and unknown variables warned about) before the log format they
    name is known; without this, those warnings would be plain text in a JSON stream.
    If the block fails, the kept records are written at once, plainly: nothing is lost.
    """
    holder = _Holder()
    root = logging.getLogger()
    root.addHandler(holder)
    try:
        yield holder.records
    except BaseException:
        if logging.lastResort is not None:
            for record in holder.records:
                logging.lastResort.handle(record)
        raise
    finally:
        root.removeHandler(holder)


def release(records: Iterable[logging.LogRecord]) -> None:
    """Log `records` (kept by `held`) again, through the handlers configured since."""
    for record in records:
        logging.getLogger(record.name).handle(record)
