"""The pull budget of a provider: Retry-After, the circuit's states, and header parsing."""

from __future__ import annotations

import email.utils

import pytest

from receiver.errors import ProviderError, UnparseablePayload
from receiver.provider_limits import Circuit, ProviderLimits
from receiver.providers.base import retry_after_seconds

OUTAGE = ProviderError("apiframe answered 503", status_code=503)
UNREACHABLE = ProviderError("apiframe unreachable: ConnectTimeout", retryable=True)


class TestCircuit:
    """Repeated outages open the circuit; a trial after the cool-off closes or re-opens it."""

    def test_opens_after_the_threshold_and_blocks_until_the_cooldown(self) -> None:
        """Three outages in a row: no pull for the cool-off, then exactly one trial."""
        limits = ProviderLimits("p", failure_threshold=3, cooldown=10)
        for _ in range(3):
            assert limits.wait_until(100.0) is None
            limits.failed(OUTAGE, 100.0)
        assert Circuit.OPEN == limits.circuit
        assert 110.0 == limits.wait_until(105.0)
        assert limits.wait_until(110.5) is None, "the trial may go"
        assert Circuit.HALF_OPEN == limits.circuit
        assert limits.wait_until(110.6) is not None, "only one trial at a time"

    def test_a_successful_trial_closes_it(self) -> None:
        """Success in half-open closes the circuit and resets the count and cool-off."""
        limits = ProviderLimits("p", failure_threshold=1, cooldown=10)
        limits.failed(UNREACHABLE, 0.0)
        assert limits.wait_until(11.0) is None
        limits.succeeded()
        assert Circuit.CLOSED == limits.circuit
        assert 0 == limits.failures
        assert limits.wait_until(11.1) is None

    def test_a_failed_trial_reopens_it_for_twice_as_long(self) -> None:
        """Each failed trial doubles the cool-off, up to the cap."""
        limits = ProviderLimits("p", failure_threshold=1, cooldown=10, max_cooldown=25)
        limits.failed(OUTAGE, 0.0)
        assert limits.wait_until(10.0) is None
        limits.failed(OUTAGE, 10.0)
        assert 30.0 == limits.wait_until(10.0)
        assert limits.wait_until(30.0) is None
        limits.failed(OUTAGE, 30.0)
        assert 55.0 == limits.wait_until(30.0), "capped at 25 s"

    def test_task_errors_do_not_trip_it(self) -> None:
        """404s for one task and unreadable answers say nothing about the provider's health."""
        limits = ProviderLimits("p", failure_threshold=2)
        for exc in (ProviderError("gone", status_code=404), UnparseablePayload("odd")):
            limits.failed(exc, 0.0)
            limits.failed(exc, 0.0)
        assert Circuit.CLOSED == limits.circuit
        assert limits.wait_until(0.0) is None


class TestRetryAfter:
    """A 429 pauses every pull of the provider for the time it asked, or a default."""

    def test_429_with_retry_after(self) -> None:
        """The provider's own figure is obeyed, and the circuit stays closed."""
        limits = ProviderLimits("p", failure_threshold=1)
        asked = limits.failed(ProviderError("slow down", status_code=429, retry_after=7), 50.0)
        assert 57.0 == asked
        assert 57.0 == limits.wait_until(51.0)
        assert Circuit.CLOSED == limits.circuit

    def test_429_without_retry_after_uses_the_default(self) -> None:
        """No header: the default pause applies."""
        limits = ProviderLimits("p", default_retry_after=30)
        assert 130.0 == limits.failed(ProviderError("slow down", status_code=429), 100.0)

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("120", 120.0),
            ("0", 0.0),
            ("999999", 3600.0),
            (None, None),
            ("soon", None),
            ("-1", None),
        ],
    )
    def test_header_forms(self, header: str | None, expected: float | None) -> None:
        """Seconds are read as given (capped at an hour); nonsense is ignored."""
        assert expected == retry_after_seconds(header)

    def test_http_date(self) -> None:
        """An HTTP date is turned into seconds from now."""
        header = email.utils.formatdate(1_000_090, usegmt=True)
        assert 90.0 == retry_after_seconds(header, at=1_000_000)
