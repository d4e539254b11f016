"""How many fuzz cases each target tried in this session, for the terminal summary."""

from __future__ import annotations

import os
import time
from collections import Counter

__all__ = ["ANSWERS", "CASES", "SECONDS", "answered", "count", "examples"]

CASES: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()
ANSWERS: dict[str, Counter[int]] = {}  # target -> status code -> cases, for the routes

# RECEIVER_FUZZ_EXAMPLES sets the cases per target for every fuzz test (e.g. 20000 for a
# long local run); unset, each kind of target keeps the default that keeps CI short.
_OVERRIDE = os.environ.get("RECEIVER_FUZZ_EXAMPLES")


def examples(default: int) -> int:
    """The number of cases to try per target: the override if set, else `default`."""
    return int(_OVERRIDE) if _OVERRIDE else default


class count:
    """Counts one case of `target` and the time spent on it (a context manager)."""

    def __init__(self, target: str):
        self.target = target

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and exc_type.__name__ == "UnsatisfiedAssumption":
            return  # a case hypothesis threw away (`assume`), not one tried
        CASES[self.target] += 1
        SECONDS[self.target] += time.perf_counter() - self.started


def answered(target: str, status: int) -> None:
    """Note the status a route answered, so the summary shows what the cases reached."""
    ANSWERS.setdefault(target, Counter())[status] += 1
