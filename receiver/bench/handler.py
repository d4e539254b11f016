"""The benchmark's handler: does nothing but note when it started, for delivery latency.

`receiver bench` starts its receiver with `RECEIVER_HANDLERS=receiver.bench.handler` and
`RECEIVER_BENCH_HANDLED` naming a file; each delivery appends "task_id unix_time event_id".
"""

from __future__ import annotations

import os
import time

from receiver.dispatch import on
from receiver.models import Event, Job

__all__ = ["noop"]

_path = os.environ.get("RECEIVER_BENCH_HANDLED")
_fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if _path else None


@on("*")
async def noop(event: Event, job: Job) -> None:
    """Note the start time; one unbuffered append, no fsync (latency, not durability, is noted)."""
    if _fd is not None:
        os.write(_fd, f"{event.task_id} {time.time():.6f} {event.id}\n".encode())
