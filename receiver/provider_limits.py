"""How hard we may pull on one provider: a concurrency cap, its Retry-After, and a circuit.

A provider that answers 429 (or 503 with Retry-After) is left alone until the time it
named. One that keeps failing with 5xx or timeouts trips the circuit: no pulls at all
for a cool-off that doubles each time it trips again, then one trial pull (half-open)
whose outcome closes or re-opens it. Polls refused here are rescheduled, not failed,
so an outage of the provider costs nothing but time.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from receiver.errors import ProviderError

__all__ = ["Circuit", "ProviderLimits"]

log = logging.getLogger("receiver.poller")


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ProviderLimits:
    """The pull budget of one provider inside this process."""

    def __init__(
        self,
        name: str,
        *,
        concurrency: int = 4,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        max_cooldown: float = 600.0,
        default_retry_after: float = 30.0,
    ):
        self.name = name
        self.slots = asyncio.Semaphore(concurrency)
        self.failure_threshold = failure_threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.default_retry_after = default_retry_after
        self.circuit = Circuit.CLOSED
        self.failures = 0  # consecutive 5xx / timeouts
        self.cooldown = cooldown
        self.open_until = 0.0
        self.throttled_until = 0.0  # from 429 / Retry-After
        self._trial_running = False

    def wait_until(self, at: float) -> float | None:
        """When a pull may next start, or None if one may start now (taking the trial slot)."""
        waits = [t for t in (self.throttled_until, self.open_until) if t > at]
        if waits:
            return max(waits)
        if self.circuit is Circuit.OPEN:
            self.circuit = Circuit.HALF_OPEN
            log.info("%s: circuit half-open, trying one pull", self.name)
        if self.circuit is Circuit.HALF_OPEN:
            if self._trial_running:
                return at + min(self.cooldown, 5.0)
            self._trial_running = True
        return None

    def is_open(self, at: float) -> bool:
        """Whether the circuit is open and cooling off at `at` (a look: nothing changes)."""
        return self.circuit is Circuit.OPEN and self.open_until > at

    def succeeded(self) -> None:
        if self.circuit is not Circuit.CLOSED:
            log.warning("%s: circuit closed, the provider answers again", self.name)
        self.circuit = Circuit.CLOSED
        self.failures = 0
        self.cooldown = self.base_cooldown
        self._trial_running = False

    def failed(self, exc: Exception, at: float) -> float | None:
        """Account for a failed pull; return the Retry-After time it asked for, if any."""
        self._trial_running = False
        if isinstance(exc, ProviderError) and exc.status_code == 429:
            self.throttled_until = at + (exc.retry_after or self.default_retry_after)
            return self.throttled_until
        if not _is_outage(exc):
            # A 4xx about one task (unknown id, bad key) says nothing about the provider's health.
            if self.circuit is Circuit.HALF_OPEN:
                self.circuit = Circuit.CLOSED
            return None
        if isinstance(exc, ProviderError) and exc.retry_after:
            self.throttled_until = at + exc.retry_after
        self.failures += 1
        if self.circuit is Circuit.HALF_OPEN or self.failures >= self.failure_threshold:
            self._trip(at)
        return self.throttled_until if self.throttled_until > at else None

    def _trip(self, at: float) -> None:
        if self.circuit is Circuit.HALF_OPEN:
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
        self.circuit = Circuit.OPEN
        self.open_until = at + self.cooldown
        log.warning(
            "%s: circuit open for %.0f s after %d failed pulls",
            self.name,
            self.cooldown,
            self.failures,
        )


def _is_outage(exc: Exception) -> bool:
    """5xx, timeouts and unreachable hosts: the provider, not the task, is in trouble."""
    if not isinstance(exc, ProviderError):
        return False
    return exc.status_code is None or exc.status_code >= 500
