"""The ingest routes, the hot path: verify, parse, store in one transaction, then acknowledge.

- `POST /hooks/{provider}/{token}`: a job's own callback URL.
- `GET  /hooks/{provider}/{token}?uuid=`: a nudge; it schedules a pull and carries no data.
- `POST /hooks/{provider}`: tasks submitted elsewhere, authenticated by a static secret,
  or for a generic provider by its Standard Webhooks signature over the raw body.

Every rejection is answered without detail, kept (redacted and capped) in the quarantine,
and counted against the caller's failure budget (receiver.refusals).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import ClientException
from litestar.params import FromPath

from receiver.callbacks import Reject, headers_of, kept_request, overdue_at, parse_callback
from receiver.errors import StoreUnavailable
from receiver.logs import bind, current
from receiver.metrics import METRICS, provider_label
from receiver.models import Job, RawRequest, Update, new_id, now
from receiver.providers import CallbackStyle, GenericProvider, Provider, valid_task_id
from receiver.ratelimit import client_address
from receiver.refusals import UNPROVEN_BODY_BYTES, address_wait, charge, token_of
from receiver.runtime import Runtime
from receiver.standard_webhooks import MISSING_SIGNATURE, SignatureError
from receiver.store.base import NewJob
from receiver.submit import CREATE_UNCERTAIN, queued_job
from receiver.verify import digest, matches, matches_any, redact_path

__all__ = ["HOOK_ROUTES", "headers_of", "nudge_uuid", "refused_by_framework", "skew_detail"]

log = logging.getLogger("receiver.hooks")

Answer = Response[dict[str, Any]]

_UUID_PARAM = re.compile(r"(?:^|[?&;])uuid=([^&?;#]*)")

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
        raise Reject(400, "bad_content_length") from None
    if declared is not None and declared > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:UNPROVEN_BODY_BYTES], True
        chunks.append(chunk)
    return b"".join(chunks), False


def _headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    return headers_of(request.scope["headers"])


def _client(request: Request[Any, Any, Any]) -> str | None:
    """The caller's address, through trusted proxies only (see receiver.ratelimit)."""
    runtime: Runtime = request.app.state.runtime
    return client_address(request.scope, runtime.trusted_proxies)


def _raw(request: Request[Any, Any, Any], provider: str, body: bytes) -> RawRequest:
    return kept_request(
        request.scope,
        request_id=current("request_id") or new_id("req"),
        provider=provider,
        headers=_headers(request),
        body=body,
        client=_client(request),
    )


def _adapter(runtime: Runtime, provider: str) -> Provider:
    adapter = runtime.providers.get(provider)
    if adapter is None:
        raise Reject(404, "unknown_provider")
    return adapter


def _signed(request: Request[Any, Any, Any], adapter: GenericProvider, body: bytes) -> Update:
    """A Standard Webhooks message, verified on the raw bytes before it is parsed.

    The webhook-id becomes the update's delivery id, so a redelivery is a duplicate. A
    refusal is quarantined with its reason (and a clock skew in seconds), answered 401 bare.
    """
    try:
        msg_id = adapter.authenticate(body, _headers(request))
    except SignatureError as exc:
        log.info("%s: rejected a Standard Webhooks message: %s", adapter.name, exc)
        raise Reject(401, exc.reason, detail=skew_detail(exc, adapter)) from None
    return msgspec.structs.replace(parse_callback(adapter, body), delivery_id=msg_id)


def skew_detail(exc: SignatureError, adapter: GenericProvider) -> str | None:
    """What the quarantine shows beside the reason: the absent headers, or the clock skew."""
    if exc.reason == MISSING_SIGNATURE:
        return str(exc)  # only our fixed header names
    if exc.skew is None:
        return None
    side = "behind" if exc.skew < 0 else "ahead of"
    tolerance = adapter.settings.tolerance
    return f"timestamp {abs(exc.skew)} s {side} this clock (tolerance {tolerance:g} s)"


def _confirming(runtime: Runtime, adapter: Provider) -> bool:
    """Whether this provider's callbacks are believed only as far as its status API agrees.

    An unauthenticated POST is vouched for by the job's URL token alone: a leaked token
    must not be able to end a job, or give it a result or preview URL of its choosing.
    """
    settings = runtime.settings.provider(adapter.name)
    return (
        adapter.callback_style is CallbackStyle.POST
        and settings.confirm_terminal
        and adapter.can_pull
        and bool(settings.base_url)
    )


def _unconfirmed(update: Update) -> Update:
    """What an unconfirmed body may say: its status and progress. URLs, the error and the
    task id come only from the status API (the body is still kept with the event)."""
    return msgspec.structs.replace(
        update, task_id=None, result_url=None, preview_url=None, error=None, error_code=None
    )


async def _adopt(runtime: Runtime, job: Job, task_id: str | None) -> Job:
    """A job whose create had no clear answer takes the task id its own URL reveals.

    The URL token is the credential, as for the callback itself; what the task says is
    still believed only as far as the rest of the pipeline (and the status API) allows.
    """
    if job.task_id is not None or job.create_state != CREATE_UNCERTAIN:
        return job
    if not valid_task_id(task_id) or task_id is None:
        return job
    if await runtime.store.job_by_task(job.provider, task_id) is not None:
        return job  # another job's task: never two jobs for one task
    log.info("%s: %s adopts task %s from its callback", job.provider, job.id, task_id)
    await runtime.store.set_task_id(job.id, task_id, None)
    runtime.poller.wake()
    return msgspec.structs.replace(job, task_id=task_id)


async def _job_by_token(runtime: Runtime, provider: str, token: str) -> tuple[Job, str | None]:
    match = await runtime.store.job_by_token(digest(token))
    if match is None or match.job.provider != provider:
        raise Reject(404, "unknown_token")
    bind(job_id=match.job.id)
    return match.job, match.secret_hash


def _check_secret(
    request: Request[Any, Any, Any], *, job_secret_hash: str | None, static: str | None
) -> None:
    """x-webhook-secret must equal the job's secret or the provider's static one.

    Both are compared (in constant time) whatever the first gave, so timing tells nothing.
    """
    offered = request.headers.get("x-webhook-secret")
    if offered is None:
        raise Reject(401, "missing_secret")
    job_ok = matches(offered, job_secret_hash)
    static_ok = matches_any(offered, [static])
    if not (job_ok or static_ok):
        raise Reject(401, "wrong_secret")


def _too_many(retry_after: int) -> Answer:
    return Response(
        {"error": "too many requests"},
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


async def _guarded(
    request: Request[Any, Any, Any],
    provider: str,
    handle: Callable[[Runtime, bytes], Awaitable[Answer]],
    token: str | None = None,
) -> Answer:
    """Run one hook: read the body, then `handle`; answer and quarantine a rejection.

    An address whose failure budget is spent is answered 429 before any work.
    StoreUnavailable goes on to the app's handler, which answers 503 with Retry-After.
    """
    runtime: Runtime = request.app.state.runtime
    started = time.perf_counter()
    label = provider_label(provider, runtime.settings.generic)
    bind(request_id=new_id("req"), provider=label)
    address = _client(request)
    at = now()
    if (wait := address_wait(runtime.auth_failures, address, at)) is not None:
        METRICS.callback(label, "rate_limited", time.perf_counter() - started)
        return _too_many(wait)
    body = b""
    outcome = "error"
    status = 500
    try:
        body, too_large = await _read_body(request, runtime.settings.max_body_bytes)
        if too_large:
            raise Reject(413, "too_large")
        answer = await handle(runtime, body)
        outcome = answer.content.get("disposition", "accepted")
        status = answer.status_code or 200
        return answer
    except Reject as reject:
        outcome, status = reject.reason, reject.status_code
        if (wait := charge(runtime.auth_failures, address, token, at)) is not None:
            # Someone is hammering this job's URL: refuse without a quarantine write.
            outcome, status = "rate_limited", 429
            return _too_many(wait)
        await runtime.quarantine.keep(_raw(request, provider, body), reject)
        return _answer(reject.status_code)
    except StoreUnavailable:
        outcome, status = "unavailable", 503
        raise
    finally:
        seconds = time.perf_counter() - started
        runtime.answers.note(current("request_id"), status, seconds * 1000)
        METRICS.callback(label, outcome, seconds)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s -> %d %s in %.1f ms",
                request.method,
                redact_path(request.url.path),
                status,
                outcome,
                seconds * 1000,
            )


def refused_by_framework(request: Request[Any, Any, Any], answer: Answer) -> Answer:
    """A 4xx the framework answered on a hook path, counted like any other refusal.

    No such route, a wrong method: the address (and the token in the path) pay for it, and
    an address whose budget is spent gets 429 instead.
    """
    if not 400 <= (answer.status_code or 200) < 500 or answer.status_code == 429:
        return answer
    runtime: Runtime = request.app.state.runtime
    address = _client(request)
    at = now()
    if (wait := address_wait(runtime.auth_failures, address, at)) is not None:
        return _too_many(wait)
    token = token_of(request.scope["path"])
    if (wait := charge(runtime.auth_failures, address, token, at)) is not None:
        return _too_many(wait)
    return answer


@post("/hooks/{provider:str}/{token:str}", request_max_body_size=None, status_code=200)
async def job_callback(
    request: Request[Any, Any, Any], provider: FromPath[str], token: FromPath[str]
) -> Answer:
    """A provider's callback to a job's own URL."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(runtime, provider)
        signed = _signed(request, adapter, body) if isinstance(adapter, GenericProvider) else None
        job, secret_hash = await _job_by_token(runtime, provider, token)
        if adapter.callback_style is CallbackStyle.SECRET_POST:
            static = runtime.settings.provider(provider).webhook_secret
            _check_secret(request, job_secret_hash=secret_hash, static=static)
        update = signed or parse_callback(adapter, body)
        if update.task_id and job.task_id and update.task_id != job.task_id:
            raise Reject(400, "task_mismatch")
        job = await _adopt(runtime, job, update.task_id)
        if _confirming(runtime, adapter):
            if update.status.terminal and not job.status.terminal:
                # Kept, and the provider asked. Before the create call has answered there
                # is no task id to ask about: the pull waits for it (Store.set_task_id).
                raw = _raw(request, provider, body)
                await runtime.store.record_nudge(job.id, raw, poll_at=now())
                runtime.poller.wake()
                return _answer(202, ok=True, confirming=True)
            update = _unconfirmed(update)
        recorded = await runtime.ingest.record(
            job.id,
            update,
            source="callback",
            raw=_raw(request, provider, body),
            next_poll_at=overdue_at(runtime, adapter),
        )
        return _answer(
            200, ok=True, event=recorded.event.id, disposition=recorded.event.disposition.value
        )

    return await _guarded(request, provider, handle, token)


@get("/hooks/{provider:str}/{token:str}", request_max_body_size=None, status_code=202)
async def job_nudge(
    request: Request[Any, Any, Any], provider: FromPath[str], token: FromPath[str]
) -> Answer:
    """A bare GET that only says "ask me": schedule a pull of the job's status."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(runtime, provider)
        job, _ = await _job_by_token(runtime, provider, token)
        if not adapter.can_pull:
            raise Reject(405, "no_status_api")
        uuid = nudge_uuid(request.scope.get("query_string", b"").decode("latin-1"))
        if uuid is not None and (not valid_task_id(uuid) or (job.task_id and uuid != job.task_id)):
            raise Reject(400, "task_mismatch")
        job = await _adopt(runtime, job, uuid)
        await runtime.store.record_nudge(job.id, _raw(request, provider, body), poll_at=now())
        runtime.poller.wake()
        return _answer(202, ok=True)

    return await _guarded(request, provider, handle, token)


@post("/hooks/{provider:str}", request_max_body_size=None, status_code=200)
async def provider_callback(request: Request[Any, Any, Any], provider: FromPath[str]) -> Answer:
    """A callback for a task submitted by another tool, proven by the provider's static secret."""

    async def handle(runtime: Runtime, body: bytes) -> Answer:
        adapter = _adapter(runtime, provider)
        if isinstance(adapter, GenericProvider):
            update = _signed(request, adapter, body)
        else:
            static = runtime.settings.provider(provider).webhook_secret
            if not static:
                raise Reject(404, "static_route_disabled")
            _check_secret(request, job_secret_hash=None, static=static)
            update = parse_callback(adapter, body)
        if not valid_task_id(update.task_id):
            raise Reject(400, "no_task_id")
        new_job = NewJob(job=queued_job(provider, update.task_id))
        recorded = await runtime.ingest.record(
            None,
            update,
            source="callback",
            raw=_raw(request, provider, body),
            new_job=new_job,
            next_poll_at=overdue_at(runtime, adapter),
        )
        bind(job_id=recorded.job.id)
        return _answer(
            200, ok=True, event=recorded.event.id, disposition=recorded.event.disposition.value
        )

    return await _guarded(request, provider, handle)


HOOK_ROUTES = [job_callback, job_nudge, provider_callback]
