"""What is wrong with the user's handlers, each problem in one line.

A handlers module that does not import, or registers handlers that can never run (a
status or provider that never comes, a function that cannot take `(event, job)`), stops
`receiver serve` and `receiver worker` at start with one line per problem: the file and
line, the handler at fault, what is wrong, and what to do. Every bad handler is named at
once, so a module with three mistakes takes one round of fixes, not three. `receiver
doctor` says the same lines, because both come from here.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import sysconfig
import traceback
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from receiver.errors import ConfigError

if TYPE_CHECKING:
    from receiver.dispatch import Handler, Registry

__all__ = [
    "BadHandlers",
    "BadRegistration",
    "bad_handler",
    "check_handlers",
    "choices",
    "handlers_warning",
    "import_failure",
]

_RECEIVER = str(Path(__file__).resolve().parent)
_LIBRARIES = tuple(
    str(Path(path).resolve()) for path in {sysconfig.get_path(n) for n in ("stdlib", "purelib")}
)
_SKIP = "set RECEIVER_HANDLERS to another module ('' for none)"


class BadHandlers(ConfigError):
    """The handlers module does not import, or one of its handlers can never run."""


class BadRegistration(ConfigError, ValueError):
    """An `@on(...)` that names something that does not exist (a misspelt status)."""


def choices(wrong: str, valid: Iterable[str], what: str) -> str:
    """`unknown status 'x' (did you mean 'y'?); use one of a, b, c`."""
    valid = sorted(valid)
    close = difflib.get_close_matches(wrong, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {wrong!r}{hint}; use one of {', '.join(valid)}"


def import_failure(module: str, exc: BaseException) -> BadHandlers:
    """The one-line error for a handlers module whose import raised `exc`."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}"
        what = f"SyntaxError: {exc.msg}"
    else:
        where = _user_frame(exc)
        text = " ".join(str(exc).split())[:300]
        what = text if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {text}"
    if isinstance(exc, ModuleNotFoundError):
        todo = f"install {exc.name!r} or fix the import"
    else:
        todo = "fix it"
    place = f" ({where})" if where else ""
    return BadHandlers(f"handlers module {module!r}{place}: {what}; {todo}, or {_SKIP}")


def _user_frame(exc: BaseException) -> str:
    """`file, line N` of the innermost frame in the user's code (not ours, not a library's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for wanted in (_is_users, _is_file):
        for frame in reversed(frames):
            if wanted(frame.filename):
                return f"{frame.filename}, line {frame.lineno}"
    return ""


def _is_file(filename: str) -> bool:
    return not filename.startswith("<") and not _resolved(filename).startswith(_RECEIVER)


def _is_users(filename: str) -> bool:
    return _is_file(filename) and not _resolved(filename).startswith(_LIBRARIES)


def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except OSError:
        return filename


def check_handlers(registry: Registry, providers: Collection[str]) -> None:
    """Raise BadHandlers naming every handler that can never run, one line each.

    `providers` are the known ones. The lines are the registrations refused while the
    module was imported (`registry.refused`: an unknown status), then the problems of the
    registered handlers, each group in the order of registration.
    """
    lines = list(registry.refused)
    for handler in registry.handlers.values():
        problem = _problem(handler, providers)
        if problem:
            lines.append(bad_handler(handler.func, problem, name=handler.name))
    if lines:
        raise BadHandlers("\n".join(lines))


def bad_handler(func: Callable[..., object], problem: str, *, name: str | None = None) -> str:
    """`handler module:function (file, line N): problem`, the line that names one bad handler."""
    where = _defined_at(func)
    return f"handler {_label(func, name)}{f' ({where})' if where else ''}: {problem}"


def _defined_at(func: Callable[..., object]) -> str:
    """`file, line N` where the function is written (its first decorator's line)."""
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is None:
        return ""
    return f"{code.co_filename}, line {code.co_firstlineno}"


def _problem(handler: Handler, providers: Collection[str]) -> str | None:
    if handler.provider is not None and handler.provider not in providers:
        return (
            choices(handler.provider, providers, "provider")
            + " (a generic one once declared in RECEIVER_GENERIC_PROVIDERS)"
        )
    try:
        signature = inspect.signature(handler.func)
    except (TypeError, ValueError):
        return None  # a callable whose signature cannot be read: its calls will tell
    extra = {"delivery": None} if handler.wants_delivery else {}
    try:
        signature.bind(None, None, **extra)
    except TypeError as exc:
        shape = "(event, job, delivery)" if handler.wants_delivery else "(event, job)"
        return (
            f"its signature {signature} cannot be called with {shape}: {exc}; take"
            " (event, job), and `delivery` to get the delivery's id and attempt"
        )
    return None


def _label(func: Callable[..., object], name: str | None) -> str:
    """`module:function`, and the registered name when it is another one."""
    module = getattr(func, "__module__", None) or "?"
    function = getattr(func, "__qualname__", None) or type(func).__qualname__
    label = f"{module}:{function}"
    return label if name in (None, f"{module}.{function}") else f"{label} ({name!r})"


def handlers_warning(module: str, registry: Registry, builtins: Collection[str]) -> str | None:
    """What to tell an operator starting with no handlers of their own, or None.

    An empty RECEIVER_HANDLERS is a choice, said nowhere; a module not found, or one that
    registers nothing, is worth one line, which names the built-in handlers still on.
    """
    if not module:
        return None
    own = [name for name in registry.handlers if name not in builtins]
    if module in sys.modules and own:
        return None
    start = (
        f"module {module!r} registers no handlers"
        if module in sys.modules
        else f"no module {module!r} found"
    )
    if builtins:
        return f"{start}: only the built-in handlers are registered ({', '.join(builtins)})"
    return f"{start}: no handlers are registered; callbacks are stored and fire nothing"
