"""Terminal output shared by the subcommands: colour, tables, progress bars and ages.

Colour is used only on a terminal, and never when `NO_COLOR` is set (no-color.org) or
`TERM=dumb`. Text from providers is printed with control characters replaced, so a
hostile payload cannot move the cursor or change the terminal's title.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from receiver.models import DeliveryState, Status

__all__ = [
    "Table",
    "age",
    "bar",
    "clean",
    "colour_enabled",
    "paint",
    "state_colour",
    "status_colour",
    "when",
]

_CODES = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "dim": "2",
    "bold": "1",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_STATUS = {
    Status.QUEUED: "dim",
    Status.RUNNING: "cyan",
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
    Status.CANCELLED: "yellow",
}
_STATE = {
    DeliveryState.PENDING: "yellow",
    DeliveryState.RUNNING: "cyan",
    DeliveryState.DONE: "green",
    DeliveryState.DEAD: "red",
}


def colour_enabled(stream: IO[str] | None = None) -> bool:
    """Whether to colour `stream` (stdout by default)."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, colour: str | None, *, enabled: bool) -> str:
    """`text` in `colour` when enabled; plain otherwise."""
    if not enabled or colour is None:
        return text
    return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"


def status_colour(status: Status) -> str:
    return _STATUS[status]


def state_colour(state: DeliveryState) -> str:
    return _STATE[state]


def clean(value: Any) -> str:
    """Text safe to print: None as "-", control characters (escape codes too) as "?"."""
    if value is None:
        return "-"
    return _CONTROL.sub("?", str(value))


def _unicode(stream: IO[str]) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf16", "utf32")


def bar(progress: float | None, *, width: int = 16, stream: IO[str] | None = None) -> str:
    """The percentage, then a bar: ` 50% ████████░░░░░░░░`; `-` when unknown."""
    if progress is None:
        return "-"
    fraction = min(1.0, max(0.0, progress))
    filled = round(fraction * width)
    full, empty = ("█", "░") if _unicode(stream or sys.stdout) else ("#", ".")
    return f"{fraction:4.0%} {full * filled}{empty * (width - filled)}"


def age(seconds_since_epoch: float, *, at: float | None = None) -> str:
    """How long ago, in the largest whole unit: `5s`, `3m`, `2h`, `4d`."""
    elapsed = max(0.0, (time.time() if at is None else at) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if elapsed >= size:
            return f"{int(elapsed // size)}{unit}"
    return f"{int(elapsed)}s"


def when(seconds_since_epoch: float) -> str:
    """A local timestamp to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds_since_epoch))


class Table:
    """Columns padded to their widest cell; colour codes do not count towards the width."""

    def __init__(self, headers: Sequence[str], *, right: Sequence[str] = ()) -> None:
        self.headers = list(headers)
        self.right = set(right)
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def render(self, *, colour: bool) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(_ANSI.sub("", cell)))
        lines = [self._line(self.headers, widths, bold=colour)]
        lines += [self._line(row, widths) for row in self.rows]
        return "\n".join(lines)

    def _line(self, cells: Sequence[str], widths: Sequence[int], *, bold: bool = False) -> str:
        out = []
        for header, cell, width in zip(self.headers, cells, widths, strict=True):
            pad = " " * (width - len(_ANSI.sub("", cell)))
            out.append(pad + cell if header in self.right else cell + pad)
        line = "  ".join(out).rstrip()
        return paint(line, "bold", enabled=bold)
