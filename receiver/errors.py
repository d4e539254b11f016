"""Exceptions of the receiver, all rooted in one `ReceiverError`."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "GiveUp",
    "IdempotencyKeyReused",
    "ProviderError",
    "ReceiverError",
    "Retry",
    "StoreUnavailable",
    "UnknownProvider",
    "UnparseablePayload",
    "did_you_mean",
]


def did_you_mean(name: str, known: Iterable[str], *, cutoff: float = 0.6) -> str:
    """` (did you mean x?)` for the closest of `known` to a misspelt `name`, else ``."""
    import difflib  # only an error message needs it: not on every start

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


class ConfigError(ReceiverError):
    """A setting is missing or has a value that cannot be used."""


class UnknownProvider(ReceiverError):
    """A provider name that no adapter answers to."""


class StoreUnavailable(ReceiverError):
    """The store cannot read or commit right now; callers should retry later."""


class UnparseablePayload(ReceiverError):
    """A provider's body is valid JSON but not a shape its adapter understands."""


class ProviderError(ReceiverError):
    """A provider refused or failed a request we sent it."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it said
        # The request may have been carried out: it was sent, and no clear answer came.
        self.outcome_unknown = outcome_unknown


class IdempotencyKeyReused(ReceiverError):
    """An idempotency key already made a job from a different request."""


class Retry(ReceiverError):
    """Raised by a handler to ask for another attempt after `defer` seconds."""

    def __init__(self, defer: float | None = None):
        super().__init__(f"retry requested (defer={defer})")
        self.defer = defer


class GiveUp(ReceiverError):
    """Raised by a handler when no later attempt can succeed: the delivery is dead at once."""
