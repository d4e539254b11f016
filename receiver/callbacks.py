"""Reading a callback, shared by both hook paths (receiver.hooks and receiver.fastpath).

Kept apart from the routes so that the fast path loads without the web framework.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from receiver.errors import UnparseablePayload
from receiver.models import Update, now
from receiver.providers import Provider

if TYPE_CHECKING:
    from receiver.runtime import Runtime

__all__ = ["Reject", "headers_of", "overdue_at", "parse_callback"]

log = logging.getLogger("receiver.hooks")

_decode_json = msgspec.json.Decoder().decode


class Reject(Exception):
    """A request we refuse: the status to answer and the reason kept in the quarantine."""

    def __init__(self, status_code: int, reason: str):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def headers_of(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every header as sent; a repeated one keeps all its values, comma-joined as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def parse_callback(adapter: Provider, body: bytes) -> Update:
    """The body as the adapter reads it; any failure to read it is a 400, never a 500."""
    try:
        decoded = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # Invalid UTF-8 inside a string and very deep nesting fail outside DecodeError.
        raise Reject(400, "bad_json") from None
    if not isinstance(decoded, dict):
        raise Reject(400, "not_an_object")
    try:
        return adapter.parse_callback(decoded)
    except UnparseablePayload:
        raise Reject(400, "bad_payload") from None
    except Exception:
        # An adapter that trips over a body is our bug; the body is still only a bad request.
        log.exception("%s adapter failed to read a callback body", adapter.name)
        raise Reject(400, "bad_payload") from None


def overdue_at(runtime: Runtime, adapter: Provider) -> float | None:
    """News pushes the job's deadline back: it is polled only if the next news is late."""
    if not adapter.can_pull:
        return None
    return now() + runtime.settings.deadline_for(adapter.name)
