"""Reading a callback: its headers, the copy of it that is kept, its body as an Update.

Shared by the hook routes (receiver.hooks, receiver.hook_handlers) and the quarantine
(receiver.refusals). What is kept of a request (accepted or refused) is redacted and
capped here, once: each header name to 128 bytes and value to 1 KiB, all headers to 8 KiB
(the rest dropped and counted), the path and the query to 1 KiB each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from receiver.errors import UnparseablePayload
from receiver.models import RawRequest, Update, now
from receiver.providers import Provider
from receiver.verify import REDACTED, redact_path, redact_query, secret_name

if TYPE_CHECKING:
    from receiver.runtime import Runtime

__all__ = [
    "HEADERS_BYTES",
    "Reject",
    "capped",
    "headers_of",
    "kept_headers",
    "kept_request",
    "overdue_at",
    "parse_callback",
]

log = logging.getLogger("receiver.hooks")

_decode_json = msgspec.json.Decoder().decode


class Reject(Exception):
    """A request we refuse: the status to answer and the reason kept in the quarantine.

    `reason` is a short fixed word (also a metrics label); `detail`, ours and never the
    caller's text, is kept beside it in the quarantine only (e.g. a clock skew).
    """

    def __init__(self, status_code: int, reason: str, *, detail: str | None = None):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail


def headers_of(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every header as sent; a repeated one keeps all its values, comma-joined as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


# Headers are read as latin-1, so for them a character is a byte.
_HEADER_NAME_BYTES = 128
_HEADER_VALUE_BYTES = 1024
HEADERS_BYTES = 8 * 1024
_TEXT_CHARS = 1024  # the path and the query
_DROPPED = "[not kept]"


def capped(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}[+{len(text) - limit}]"


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as they are kept: credentials redacted (on the whole name), then capped."""
    kept: dict[str, str] = {}
    room = HEADERS_BYTES
    for name, value in headers.items():
        if secret_name(name):
            value = REDACTED
        if len(name) > _HEADER_NAME_BYTES or len(value) > _HEADER_VALUE_BYTES:
            name, value = capped(name, _HEADER_NAME_BYTES), capped(value, _HEADER_VALUE_BYTES)
        room -= len(name) + len(value)
        if room < 0:
            kept[_DROPPED] = f"{len(headers) - len(kept)} more headers"
            break
        kept[name] = value
    return kept


def kept_request(
    scope: Mapping[str, Any],
    *,
    request_id: str,
    provider: str,
    headers: Mapping[str, str],
    body: bytes,
    client: str | None,
) -> RawRequest:
    """The copy of a hook request that is stored: redacted and capped, the body as given."""
    return RawRequest(
        id=request_id,
        received_at=now(),
        provider=provider,
        method=scope["method"],
        # The scope's path and raw query: a query that is not UTF-8 must still be kept.
        path=capped(redact_path(scope["path"]), _TEXT_CHARS),
        query=capped(redact_query(scope.get("query_string", b"").decode("latin-1")), _TEXT_CHARS),
        headers=kept_headers(headers),
        body=body,
        client=client,
    )


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
