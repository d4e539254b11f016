"""`command`: run a program for each event, as the well-known command-running webhook tools do.

The program gets the event in `EVENT_*` variables (`EVENT_JOB_ID`, `EVENT_STATUS`,
`EVENT_RESULT_URL`, `EVENT_METADATA` as JSON, `EVENT_JSON` the whole document...) and in
its arguments through placeholders (`{job_id}`, `{metadata.customer}`). It is executed
directly, never through a shell, so no value can inject a command. Nor can a value
become an option: an argument that only a filled-in value makes begin with `-` is
refused (the program is not run and the delivery fails with the reason), unless it
follows a literal `--` argument; `--name={placeholder}` is the way to pass a value to
an option. A value holding a NUL byte, which a program cannot be given, is refused
the same way, never cut short. It runs in its own
process group: past the timeout, or when the delivery is cut off, the whole group is
killed. A non-zero exit is a failure, retried like any handler's. Only the variables
named in `pass_env` (and PATH, HOME, LANG, TZ) are inherited: the receiver's own
environment holds API keys and the admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from typing import Any

import msgspec

from receiver.builtins.outbound import event_document
from receiver.builtins.settings import CommandSettings
from receiver.dispatch import DeliveryInfo, Registry
from receiver.errors import GiveUp
from receiver.models import Event, Job

__all__ = [
    "COMMAND_HANDLER",
    "FIELDS",
    "CommandFailed",
    "CommandRefused",
    "arguments",
    "environment",
    "install_command",
]

COMMAND_HANDLER = "builtin.command"
# The event's fields a placeholder or an EVENT_ variable can name.
FIELDS = (
    "event_id",
    "job_id",
    "provider",
    "task_id",
    "status",
    "raw_status",
    "progress",
    "result_url",
    "preview_url",
    "error",
    "error_code",
    "delivery_id",
    "attempt",
)
_ALWAYS_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")
_OUTPUT_KEPT = 2000  # bytes of the program's output kept for the error message
_PLACEHOLDER = re.compile(r"\{([a-z_]+)(?:\.([A-Za-z0-9_.-]+))?\}")


class CommandFailed(Exception):
    """The program exited non-zero or overran its timeout; the delivery is retried."""


class CommandRefused(CommandFailed, GiveUp):
    """An event value cannot be given to the program as configured, so it is not run.

    The same event is refused on every attempt, so the delivery is dead at once.
    """


def _passable(value: str, where: str) -> str:
    """`value` if a program can be given it whole; CommandRefused naming `where` if not."""
    if "\x00" in value:
        raise CommandRefused(f"{where} holds a NUL byte, which cannot be passed to a program")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise CommandRefused(f"{where} holds text that cannot be passed to a program") from None
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _fields(event: Event, job: Job, delivery: DeliveryInfo) -> dict[str, str]:
    values: dict[str, Any] = {
        "event_id": event.id,
        "job_id": job.id,
        "provider": event.provider,
        "task_id": event.task_id or job.task_id,
        "status": event.status.value,
        "raw_status": event.raw_status,
        "progress": event.progress,
        "result_url": event.result_url or job.result_url,
        "preview_url": event.preview_url or job.preview_url,
        "error": event.error,
        "error_code": event.error_code,
        "delivery_id": delivery.id,
        "attempt": delivery.attempt,
    }
    return {name: _text(values[name]) for name in FIELDS}


def _argument_name(index: int, template: str) -> str:
    """`argument 3 ({error})`: its position and placeholders, never its literal text,
    which may hold a credential."""
    placeholders = " ".join(match.group(0) for match in _PLACEHOLDER.finditer(template))
    return f"argument {index} ({placeholders})"


def arguments(argv: list[str], event: Event, job: Job, delivery: DeliveryInfo) -> list[str]:
    """`argv` with each placeholder replaced inside its own argument (a missing key gives "").

    CommandRefused when a value would make an argument an option (see the module's
    docstring) or cannot be passed at all.
    """
    fields = _fields(event, job, delivery)

    def fill(match: re.Match[str]) -> str:
        name, key = match.groups()
        if name == "metadata" and key:
            return _text(job.metadata.get(key))
        return fields.get(name, match.group(0))

    filled: list[str] = []
    options_end = False  # after a literal "--", arguments are operands whatever they hold
    for index, template in enumerate(argv):
        where = _argument_name(index, template)
        argument = _passable(_PLACEHOLDER.sub(fill, template), where)
        if argument.startswith("-") and not template.startswith("-") and not options_end:
            raise CommandRefused(
                f"{where} would begin with '-' and be read as an option;"
                " put it after a literal -- or in --name={value} form"
            )
        options_end = options_end or template == "--"
        filled.append(argument)
    return filled


def environment(
    settings: CommandSettings, event: Event, job: Job, delivery: DeliveryInfo
) -> dict[str, str]:
    """The program's whole environment: a few inherited variables and the EVENT_* ones."""
    inherited = (*_ALWAYS_INHERITED, *settings.pass_env)
    env = {name: os.environ[name] for name in inherited if name in os.environ}
    for name, value in _fields(event, job, delivery).items():
        key = "EVENT_ID" if name == "event_id" else f"EVENT_{name.upper()}"
        env[key] = _passable(value, key)
    env["EVENT_METADATA"] = _text(job.metadata)
    env["EVENT_JSON"] = event_document(event, job).decode()
    return env


async def _tail(stream: asyncio.StreamReader | None, kept: bytearray) -> None:
    """Read a pipe to its end, keeping only its last bytes (a chatty program cannot fill memory)."""
    if stream is None:
        return
    while chunk := await stream.read(65536):
        kept += chunk
        del kept[:-_OUTPUT_KEPT]


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_command(
    settings: CommandSettings, event: Event, job: Job, delivery: DeliveryInfo
) -> None:
    """Run the program once; CommandFailed on a non-zero exit or a timeout."""
    process = await asyncio.create_subprocess_exec(
        *arguments(settings.argv, event, job, delivery),
        env=environment(settings, event, job, delivery),
        cwd=settings.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a kill reaches its children
    )
    output = bytearray()
    reader = asyncio.ensure_future(_tail(process.stdout, output))
    try:
        async with asyncio.timeout(settings.timeout):
            await process.wait()
            await reader
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        reader.cancel()
        raise CommandFailed(
            f"timed out after {settings.timeout:g}s; process group killed"
        ) from None
    except BaseException:  # cut off (handler timeout, shutdown): leave nothing running
        _kill_group(process)
        reader.cancel()
        raise
    if process.returncode != 0:
        tail = output.decode("utf-8", "replace").strip()[-500:]
        raise CommandFailed(f"exited with {process.returncode}" + (f": {tail}" if tail else ""))


def install_command(registry: Registry, settings: CommandSettings) -> list[str]:
    """Register the handler when `RECEIVER_COMMAND` is set."""
    if not settings.argv:
        return []

    async def command(event: Event, job: Job, delivery: DeliveryInfo) -> None:
        await run_command(settings, event, job, delivery)

    statuses = settings.wanted_statuses(["succeeded", "failed", "cancelled"])
    registry.on(statuses, when=settings.accepts, name=COMMAND_HANDLER)(command)
    return [COMMAND_HANDLER]
