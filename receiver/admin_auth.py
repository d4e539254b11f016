"""Admin credentials offered over HTTP: Bearer tokens checked in constant time, and guessing
limited per client address.

The admin API, /metrics and the dashboard's login form draw from one bucket of failures
per address (RECEIVER_AUTH_FAILURE_BURST, refilled at RECEIVER_AUTH_FAILURE_RATE per
second). While it is empty, every request from that address gets 429 before its token is
looked at, so a guesser cannot tell a right token from a wrong one by the answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException, TooManyRequestsException

from receiver.models import now
from receiver.ratelimit import client_address
from receiver.verify import digest

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from receiver.runtime import Runtime

__all__ = ["check_bearer", "failure_key", "locked_out_for", "record_failure"]


def _runtime(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


def failure_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The limiter key of the caller's address (through trusted proxies only), if known."""
    runtime = _runtime(connection)
    address = client_address(connection.scope, runtime.trusted_proxies)
    return f"admin:{address}" if address else None


def locked_out_for(connection: ASGIConnection[Any, Any, Any, Any]) -> int | None:
    """Seconds this caller must wait after too many failures, or None if it may try now."""
    return _runtime(connection).auth_failures.retry_after(failure_key(connection), now())


def record_failure(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Count one wrong credential against the caller's address."""
    _runtime(connection).auth_failures.failed(failure_key(connection), now())


def check_bearer(
    connection: ASGIConnection[Any, Any, Any, Any], digests: Iterable[str], refusal: str
) -> None:
    """Pass when the Bearer token's digest is one of `digests`; else 401 (`refusal`), or 429
    with Retry-After while the caller's address is locked out.

    A missing or wrongly framed header is refused but not counted: it is not a guess.
    """
    wait = locked_out_for(connection)
    if wait is not None:
        raise TooManyRequestsException(
            "too many failed attempts; retry later", headers={"Retry-After": str(wait)}
        )
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    offered = digest(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
    matched = False
    for expected in digests:  # every one compared, so the time says nothing about which
        matched |= hmac.compare_digest(offered, expected)
    if not matched:
        if offered:
            record_failure(connection)
        raise NotAuthorizedException(refusal)
