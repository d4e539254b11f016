"""The standard `process_*` metrics, read from /proc as prometheus_client's process collector
reads them, so the receiver needs no metrics library.

CPU seconds, resident and virtual memory, open and allowed file descriptors, and the start
time: the figures an operator checks first when a receiver slows down or runs out of files.
Where there is no /proc (macOS, Windows) nothing is exported, as prometheus_client does.
"""

from __future__ import annotations

import os
import resource

__all__ = ["process_lines"]

_PROC = "/proc/self"


def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _max_fds() -> float | None:
    with open(f"{_PROC}/limits", "rb") as limits:
        for line in limits:
            if line.startswith(b"Max open files"):
                soft = line.split()[3]
                return None if soft == b"unlimited" else float(soft)
    return None


def _gauge(name: str, help: str, value: float, kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value!r}"]


def process_lines() -> list[str]:
    """Exposition lines for this process; none where /proc cannot be read."""
    try:
        with open(f"{_PROC}/stat", "rb") as stat_file:
            stat = stat_file.read()
        # The fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        cpu = (float(fields[11]) + float(fields[12])) / ticks  # utime + stime
        started = float(fields[19]) / ticks + _boot_time()
        virtual = float(fields[20])
        resident = float(fields[21]) * resource.getpagesize()
        open_fds = float(len(os.listdir(f"{_PROC}/fd")))
        max_fds = _max_fds()
    except (OSError, ValueError, IndexError):
        return []
    lines = [
        *_gauge(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            cpu,
            "counter",
        ),
        *_gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", virtual),
        *_gauge("process_resident_memory_bytes", "Resident memory size in bytes.", resident),
        *_gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            started,
        ),
        *_gauge("process_open_fds", "Number of open file descriptors.", open_fds),
    ]
    if max_fds is not None:
        lines += _gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds)
    return lines
