"""The ingest routes, the hot path: verify, parse, store in one transaction, then acknowledge.

- `POST /hooks/{provider}/{token}`: a job's own callback URL.
- `GET  /hooks/{provider}/{token}?uuid=`: a nudge; it schedules a pull and carries no data.
- `POST /hooks/{provider}`: tasks submitted elsewhere, authenticated by a static secret.

Every rejection is answered without detail and kept, redacted, in the quarantine.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import ClientException
from litestar.params import FromPath

from receiver.errors import StoreUnavailable, UnknownProvider, UnparseablePayload
from receiver.models import Job, Quarantined, RawRequest, Update, new_id, now
from receiver.providers import CallbackStyle, Provider, get_provider, valid_task_id
from receiver.runtime import Runtime
from receiver.store.base import NewJob
from receiver.submit import queued_job
from receiver.verify import digest, matches, matches_any, redact_headers, redact_path, redact_query

__all__ = ["HOOK_ROUTES", "nudge_uuid"]

log = logging.getLogger("receiver.hooks")

Answer = Response[dict[str, Any]]

_decode_json = msgspec.json.Decoder().decode
# A rejected body is kept whole when the caller proved itself (a 400 on a job's own URL:
# diagnosis needs it), and only its start otherwise, so guessing tokens cannot fill the disk.
_UNPROVEN_BODY_LIMIT = 4 * 1024
_UUID_PARAM = re.compile(r"(?:^|[?&;])uuid=([^&?;#]*)")


class _Reject(Exception):
    """A request we refuse: the status to answer and the reason kept in the quarantine."""

    def __init__(self, status_code: int, reason: str):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


_MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


def _answer(status_code: int, **content: Any) -> Answer:
    return Response(
        content or {"error": _MESSAGES.get(status_code, "error")}, status_code=status_code
    )


def nudge_uuid(query: str) -> str | None:
    """The `uuid` of a nudge, also when it was glued on with a second `?` (`?token=a?uuid=X`)."""
    match = _UUID_PARAM.search(query)
    if match is None:
        return None
    return unquote(match.group(1)) or None


async def _read_body(request: Request[Any, Any, Any], limit: int) -> tuple[bytes, bool]:
    """The body, up to `limit` bytes; the flag says it was longer (and the rest was not read)."""
    try:
        declared = request.content_length
    except ClientException:
        raise _Reject(400, "bad_content_length") from None
    if declared is not None and declared > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:_UNPROVEN_BODY_LIMIT], True
        chunks.append(chunk)
    return b"".join(chunks), False


def _headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Every header as sent; a repeated one keeps all its values, comma-joined as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _raw(request: Request[Any, Any, Any], provider: str, body: bytes) -> RawRequest:
    query = request.scope.get("query_string", b"").decode("latin-1")
    return RawRequest(
        id=new_id("req"),
        received_at=now(),
        provider=provider,
        method=request.method,
        path=redact_path(request.url.path),
        query=redact_query(query),
        headers=redact_headers(_headers(request)),
        body=body,
        client=request.client.host if request.client else None,
    )


async def _quarantine(runtime: Runtime, raw: RawRequest, reject: _Reject) -> None:
    entry = Quarantined(
        id=new_id("qua"),
        received_at=raw.received_at,
        provider=raw.provider,
        reason=reject.reason,
        status_code=reject.status_code,
        method=raw.method,
        path=raw.path,
        query=raw.query,
        headers=raw.headers,
        body=raw.body if reject.status_code == 400 else raw.body[:_UNPROVEN_BODY_LIMIT],
        client=raw.client,
    )
    try:
        await runtime.store.quarantine(entry)
    except StoreUnavailable as exc:
        # The rejection stands; only the diagnosis copy is lost.
        log.warning("could not quarantine a rejected request: %s", exc)


def _adapter(provider: str) -> Provider:
    try:
        return get_provider(provider)
    except UnknownProvider:
        raise _Reject(404, "unknown_provider") from None


def _parse(adapter: Provider, body: bytes) -> Update:
    """The body as the adapter reads it; any failure to read it is a 400, never a 500."""
    try:
        decoded = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # Invalid UTF-8 inside a string and very deep nesting fail outside DecodeError.
        raise _Reject(400, "bad_json") from None
    if not isinstance(decoded, dict):
        raise _Reject(400, "not_an_object")
    try:
        return adapter.parse_callback(decoded)
    except UnparseablePayload:
        raise _Reject(400, "bad_payload") from None
    except Exception:
        # An adapter that trips over a body is our bug; the body is still only a bad request.
        log.exception("%s adapter failed to read a callback body", adapter.name)
        raise _Reject(400, "bad_payload") from None


async def _job_by_token(runtime: Runtime, provider: str, token: str) -> tuple[Job, str | None]:
    match = await runtime.store.job_by_token(digest(token))
    if match is None or match.job.provider != provider:
        raise _Reject(404, "unknown_token")
    return match.job, match.secret_hash


def _check_secret(
    request: Request[Any, Any, Any], *, job_secret_hash: str | None, static: str | None
) -> None:
    """x-webhook-secret must equal the job's secret or the provider's static one.

    Both are compared (in constant time) whatever the first gave, so timing tells nothing.
    """
    offered = request.headers.get("x-webhook-secret")
    if offered is None:
        raise _Reject(401, "missing_secret")
    job_ok = matches(offered, job_secret_hash)
    static_ok = matches_any(offered, [static])
    if not (job_ok or static_ok):
        raise _Reject(401, "wrong_secret")


async def _guarded(
    request: Request[Any, Any, Any],
    provider: str,
    handle: Callable[[Runtime, bytes], Awaitable[Answer]],
) -> Answer:
    """Run one hook: read the body, then `handle`; answer and quarantine a rejection.

    StoreUnavailable goes on to the app's handler, which answers 503 with Retry-After.
    """
    runtime: Runtime = request.app.state.runtime
    body = b""
    try:
        body, too_large = await _read_body(request, runtime.settings.max_body_bytes)
        if too_large:
            raise _Reject(413, "too_large")
        return await handle(runtime, body)
    except _Reject as reject:
        await _quarantine(runtime, _raw(request, provider, body), reject)
        return _answer(reject.status_code)


@post("/hooks/{provider:str}/{token:str}", request_max_body_size=None, status_code=200)
async def job_callback(
    request: Request[Any, Any, Any], provider: FromPath[str], token: FromPath[str]
) -> Answer:
    """A provider's callback to a job's own URL."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(provider)
        job, secret_hash = await _job_by_token(runtime, provider, token)
        if adapter.callback_style is CallbackStyle.SECRET_POST:
            static = runtime.settings.provider(provider).webhook_secret
            _check_secret(request, job_secret_hash=secret_hash, static=static)
        update = _parse(adapter, body)
        if update.task_id and job.task_id and update.task_id != job.task_id:
            raise _Reject(400, "task_mismatch")
        recorded = await runtime.ingest.record(
            job.id, update, source="callback", raw=_raw(request, provider, body)
        )
        return _answer(
            200, ok=True, event=recorded.event.id, disposition=recorded.event.disposition.value
        )

    return await _guarded(request, provider, handle)


@get("/hooks/{provider:str}/{token:str}", status_code=202)
async def job_nudge(
    request: Request[Any, Any, Any], provider: FromPath[str], token: FromPath[str]
) -> Answer:
    """A bare GET that only says "ask me": schedule a pull of the job's status."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(provider)
        job, _ = await _job_by_token(runtime, provider, token)
        if not adapter.can_pull:
            raise _Reject(405, "no_status_api")
        uuid = nudge_uuid(request.scope.get("query_string", b"").decode("latin-1"))
        if uuid is not None and (not valid_task_id(uuid) or (job.task_id and uuid != job.task_id)):
            raise _Reject(400, "task_mismatch")
        await runtime.store.record_nudge(job.id, _raw(request, provider, body), poll_at=now())
        runtime.poller.wake()
        return _answer(202, ok=True)

    return await _guarded(request, provider, handle)


@post("/hooks/{provider:str}", request_max_body_size=None, status_code=200)
async def provider_callback(request: Request[Any, Any, Any], provider: FromPath[str]) -> Answer:
    """A callback for a task submitted by another tool, proven by the provider's static secret."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(provider)
        static = runtime.settings.provider(provider).webhook_secret
        if not static:
            raise _Reject(404, "static_route_disabled")
        _check_secret(request, job_secret_hash=None, static=static)
        update = _parse(adapter, body)
        if not valid_task_id(update.task_id):
            raise _Reject(400, "no_task_id")
        new_job = NewJob(job=queued_job(provider, update.task_id))
        recorded = await runtime.ingest.record(
            None, update, source="callback", raw=_raw(request, provider, body), new_job=new_job
        )
        return _answer(
            200, ok=True, event=recorded.event.id, disposition=recorded.event.disposition.value
        )

    return await _guarded(request, provider, handle)


HOOK_ROUTES = [job_callback, job_nudge, provider_callback]
