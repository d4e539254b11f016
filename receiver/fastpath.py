"""The hot routes in raw ASGI, in front of Litestar: a provider's authenticated callbacks.

Profiling showed Litestar's ordinary handler path (routing, the request object, the
response machinery) costing about as much CPU as verifying and storing a callback.
These routes take only the case that must be fast: a callback to `POST /hooks/{provider}`
with the provider's static secret, or to a job's own `POST /hooks/{provider}/{token}`
with its secret, from a provider that signs with a secret header; a declared length
within the limit, a body its adapter reads, from an address that is not being refused.
Any other request is handed, its body replayed, to the ordinary
route in receiver.hooks, so every rejection (401, 400, 404, 413, 429, the quarantine,
redaction, failure budgets) is still answered by one piece of code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from receiver.callbacks import Reject, headers_of, kept_request, overdue_at, parse_callback
from receiver.errors import StoreUnavailable
from receiver.logs import bind
from receiver.metrics import METRICS
from receiver.models import RawRequest, Update, new_id, now
from receiver.providers import CallbackStyle, GenericProvider, Provider, valid_task_id
from receiver.ratelimit import client_address
from receiver.refusals import address_wait
from receiver.runtime import Runtime
from receiver.store.base import NewJob, Recorded, TokenMatch
from receiver.submit import queued_job
from receiver.verify import digest, matches

__all__ = ["FastHooks"]

log = logging.getLogger("receiver.hooks")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode


class _Route(msgspec.Struct, frozen=True):
    provider: str
    adapter: Provider
    # The static secret's digest, made once: a check hashes only the candidate. None: the
    # provider has none (its jobs' own URLs still carry a per-job secret).
    secret_digest: str | None
    by_token: bool = False  # `/hooks/{provider}/{token}`: a job's own URL


class FastHooks:
    """Authenticated callbacks answered without the framework; everything else to `fallback`."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.max_body = runtime.settings.max_body_bytes
        self.retry_after = str(runtime.settings.retry_after).encode()
        # Built once: which paths are taken here, with their adapter and secret.
        self.routes: dict[str, _Route] = {}  # by path: the static-secret routes
        self.token_routes: dict[str, _Route] = {}  # by provider: the jobs' own URLs
        for name, adapter in runtime.providers.items():
            if adapter.callback_style is not CallbackStyle.SECRET_POST or isinstance(
                adapter, GenericProvider
            ):
                continue
            secret = runtime.settings.provider(name).webhook_secret
            static = digest(secret) if secret else None
            self.token_routes[name] = _Route(name, adapter, static, by_token=True)
            if static is not None:
                self.routes[f"/hooks/{name}"] = _Route(name, adapter, static)

    def route(self, scope: Scope) -> _Route | None:
        """The route for `scope` if this path takes it."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        static = self.routes.get(path)
        if static is not None or not path.startswith("/hooks/"):
            return static
        provider, slash, token = path[len("/hooks/") :].partition("/")
        if not slash or not token or "/" in token:
            return None
        return self.token_routes.get(provider)

    async def handle(
        self, route: _Route, scope: Scope, receive: Receive, send: Send, fallback: ASGIApp
    ) -> None:
        """Answer the callback here, or hand it to `fallback` (which then counts and logs it)."""
        runtime = self.runtime
        started = time.perf_counter()
        headers = headers_of(scope["headers"])
        address = client_address(scope, runtime.trusted_proxies)
        length = headers.get("content-length", "")
        if (
            address_wait(runtime.auth_failures, address, now()) is not None
            or not (length.isascii() and length.isdigit())
            or int(length) > self.max_body
        ):
            await fallback(scope, receive, send)  # refused, chunked or too large: the usual route
            return
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller hung up
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:  # more than it declared: the usual route answers 413
                await fallback(scope, _replay(b"".join(chunks), receive), send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        offered = headers.get("x-webhook-secret")
        update = None
        # A job's own URL is checked against its secret inside the write (see `_record`).
        if route.by_token or matches(offered, route.secret_digest):
            try:
                update = parse_callback(route.adapter, body)
            except Reject:
                update = None
        if update is None or not valid_task_id(update.task_id):
            await fallback(scope, _replay(body, receive), send)
            return
        request_id = new_id("req")
        bind(request_id=request_id, provider=route.provider)
        raw = kept_request(
            scope,
            request_id=request_id,
            provider=route.provider,
            headers=headers,
            body=body,
            client=address,
        )
        try:
            recorded = await self._record(route, scope["path"], offered, update, raw)
        except StoreUnavailable as exc:
            METRICS.callback(route.provider, "unavailable", time.perf_counter() - started)
            log.warning("store unavailable on %s: %s", raw.path, exc)
            await _respond(
                send,
                503,
                b'{"error":"store unavailable, retry later"}',
                [(b"retry-after", self.retry_after)],
            )
            runtime.answers.note(request_id, 503, (time.perf_counter() - started) * 1000)
            return
        except Exception as exc:
            METRICS.callback(route.provider, "error", time.perf_counter() - started)
            log.error("unexpected error on POST %s", raw.path, exc_info=exc)
            await _respond(send, 500, b'{"error":"internal error"}')
            runtime.answers.note(request_id, 500, (time.perf_counter() - started) * 1000)
            return
        if recorded is None:  # not this job's secret, or not this provider's job
            await fallback(scope, _replay(body, receive), send)
            return
        event = recorded.event
        bind(job_id=recorded.job.id)
        answer = {"ok": True, "event": event.id, "disposition": event.disposition.value}
        await _respond(send, 200, _encode(answer))
        seconds = time.perf_counter() - started
        runtime.answers.note(request_id, 200, seconds * 1000)
        METRICS.callback(route.provider, event.disposition.value, seconds)
        if log.isEnabledFor(logging.INFO):  # as receiver.hooks logs every hook it answers
            log.info(
                "POST %s -> 200 %s in %.1f ms", raw.path, event.disposition.value, seconds * 1000
            )

    async def _record(
        self, route: _Route, path: str, offered: str | None, update: Update, raw: RawRequest
    ) -> Recorded | None:
        """Commit the callback; None (nothing written) when its job's own URL refuses it."""
        ingest, next_poll_at = self.runtime.ingest, overdue_at(self.runtime, route.adapter)
        if not route.by_token:
            new_job = NewJob(job=queued_job(route.provider, update.task_id))
            return await ingest.record(
                None, update, source="callback", raw=raw, new_job=new_job, next_poll_at=next_poll_at
            )

        def accept(match: TokenMatch) -> bool:
            # The job's own secret or the provider's static one: both compared, as
            # receiver.hooks does, so timing tells nothing.
            job_ok = matches(offered, match.secret_hash)
            static_ok = matches(offered, route.secret_digest)
            task_id = match.job.task_id
            return (
                (job_ok or static_ok)
                and match.job.provider == route.provider
                and not (task_id and update.task_id and update.task_id != task_id)
            )

        token_hash = digest(path.rsplit("/", 1)[1])
        return await ingest.record_by_token(
            token_hash, accept, update, source="callback", raw=raw, next_poll_at=next_poll_at
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body first, then defers to the real one."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
