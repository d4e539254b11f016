"""What a failing handler leaves on its delivery: the exception, then where it was raised.

The first line is the exception as `Type: message`, so every one-line display (tables,
the live dashboard) reads as before; the lines after it are the frames of the user's
code, from the handler's own frame to the innermost (file, line and source), so a
delivery's error says where to look. The receiver's own frames are left out.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable
from typing import Any

from receiver.errors import GiveUp

__all__ = ["FRAMES", "MESSAGE_CHARS", "TRACEBACK_CHARS", "describe_failure", "split_error"]

FRAMES = 5  # the handler's own frame and the innermost ones below it
MESSAGE_CHARS = 1000
TRACEBACK_CHARS = 3000
_OURS = os.path.dirname(__file__) + os.sep  # the same spelling as its modules' co_filename
_HEADER = "Traceback (the handler's frame and the innermost ones):"


def describe_failure(exc: BaseException, func: Callable[..., Any]) -> str:
    """`Type: message` on one line, then the frames from the handler `func` inward.

    A `GiveUp` is the handler's own verdict rather than a bug: its message alone.
    """
    message = " ".join(str(exc).split())
    first = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = None if isinstance(exc, GiveUp) else _frames_from(exc, func)
    if not frames:
        return first[:MESSAGE_CHARS]
    shown = [frames.format_frame_summary(frame) for frame in frames]
    if len(shown) > FRAMES:
        skipped = len(shown) - FRAMES
        gap = f"  ... {skipped} frame{'s' if skipped > 1 else ''} ...\n"
        shown = [shown[0], gap, *shown[-(FRAMES - 1) :]]
    trace = "".join(shown).rstrip("\n")
    if len(trace) > TRACEBACK_CHARS:  # the innermost end is the one to keep
        trace = "  ..." + trace[-(TRACEBACK_CHARS - 5) :]
    return f"{first[:MESSAGE_CHARS]}\n{_HEADER}\n{trace}"


def _frames_from(exc: BaseException, func: Callable[..., Any]) -> traceback.StackSummary:
    """The frames from the handler's own one inward (the runner's left out)."""
    try:
        code = inspect.unwrap(func).__code__
    except AttributeError:
        code = None  # a callable object: start after the runner's last frame
    entries = list(traceback.walk_tb(exc.__traceback__))
    start = next((i for i, (frame, _) in enumerate(entries) if frame.f_code is code), None)
    if start is None:
        runner = [
            i
            for i, (frame, _) in enumerate(entries)
            if frame.f_globals.get("__name__") == "receiver.dispatch"
        ]
        start = runner[-1] + 1 if runner else 0
    # The receiver's own frames (a built-in handler, a helper called) are not the user's to
    # read: a failure that is all ours is its message alone.
    theirs = [(f, n) for f, n in entries[start:] if not f.f_code.co_filename.startswith(_OURS)]
    return traceback.StackSummary.extract(theirs, capture_locals=False)


def split_error(text: str | None) -> tuple[str | None, str]:
    """(the first line, the traceback after it, or "") of a delivery's `last_error`."""
    if text is None:
        return None, ""
    first, _, rest = text.partition("\n")
    return first, rest
