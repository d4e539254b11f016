"""A handler for the benchmarks: logs when it starts, in another process than the receiver."""

from __future__ import annotations

import os
import time

from receiver import Event, Job, on

__all__ = ["started"]


@on("*")
async def started(event: Event, job: Job) -> None:
    line = f"{job.task_id} {time.time():.6f} {event.received_at:.6f}\n".encode()
    fd = os.open(os.environ["BENCH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
