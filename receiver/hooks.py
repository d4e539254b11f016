"""The hook routes, in raw ASGI: every path under /hooks/, every style, every refusal.

- `POST /hooks/{provider}`: a static secret header, or a Standard Webhooks signature.
- `POST /hooks/{provider}/{token}`: a job's own URL (its secret header, its token alone, or
  a signature), looked up inside the write.
- `GET  /hooks/{provider}/{token}?uuid=`: a nudge; it schedules a pull and carries no data.

Profiling showed a web framework's request path (routing, the request object, the response
machinery) costing about as much CPU as verifying and storing a callback, so these routes
do without one: receiver.app hands them every request whose path starts with /hooks/.
What each route does is in receiver.hook_handlers; here is what they share: reading the
body within RECEIVER_MAX_BODY_BYTES, and every answer. A refusal (400, 401, 404, 405,
413) is answered without detail, kept (redacted and capped) in the quarantine, and charged
to the caller's failure budget (receiver.refusals), which answers 429 once it is spent; a
store that cannot commit gets 503 with Retry-After. A path or method no route takes (404,
405) is charged too, but not kept. Every answer goes through `answer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import msgspec

from receiver.asgi import Receive, Scope, Send
from receiver.callbacks import Reject, headers_of
from receiver.errors import StoreUnavailable
from receiver.hook_handlers import Handler, HookHandlers, HookRequest
from receiver.logs import bind
from receiver.metrics import METRICS, provider_label
from receiver.models import new_id, now
from receiver.ratelimit import client_address
from receiver.refusals import UNPROVEN_BODY_BYTES, address_wait, charge, token_of
from receiver.runtime import Runtime
from receiver.verify import redact_path

__all__ = ["PREFIX", "Hooks", "answer"]

log = logging.getLogger("receiver.hooks")
_app_log = logging.getLogger("receiver")  # where the rest of the app logs faults

PREFIX = "/hooks/"

Headers = Sequence[tuple[bytes, bytes]]

_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode

# The bodies of every refusal, as the framework that answered them before wrote them: a
# path no route takes said "Not Found", a route that refused said "not found".
_REFUSED = {
    400: b'{"error":"bad request"}',
    401: b'{"error":"unauthorized"}',
    404: b'{"error":"not found"}',
    405: b'{"error":"method not allowed"}',
    413: b'{"error":"request body too large"}',
}
_NO_ROUTE = b'{"error":"Not Found"}'
_WRONG_METHOD = b'{"error":"Method Not Allowed"}'
_TOO_MANY = b'{"error":"too many requests"}'
_UNAVAILABLE = b'{"error":"store unavailable, retry later"}'
_INTERNAL = b'{"error":"internal error"}'
# The methods each kind of path takes, as the 405's Allow header says.
_ALLOW_PROVIDER = b"POST, OPTIONS"
_ALLOW_TOKEN = b"POST, OPTIONS, GET"


class _Disconnected(Exception):
    """The caller hung up before its body was read."""


async def answer(request: HookRequest, status: int, body: bytes, headers: Headers = ()) -> None:
    """Send the answer to `request`: every hook answer, success or refusal, is sent here."""
    request.status = status
    head = [_JSON, (b"content-length", str(len(body)).encode())] if status != 204 else []
    await request.send(
        {"type": "http.response.start", "status": status, "headers": [*head, *headers]}
    )
    await request.send({"type": "http.response.body", "body": body})


def _route(path: str) -> tuple[str, str | None] | None:
    """(provider, token or None) of a hook path; None when no route takes it.

    Empty segments are skipped, as the framework did (`/hooks/p/` is `/hooks/p`).
    """
    parts = [part for part in path[len(PREFIX) :].split("/") if part]
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2:
        return parts[0], parts[1]
    return None


class Hooks:
    """The ASGI app of the hook routes; receiver.app gives it every path under PREFIX."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.handlers = HookHandlers(runtime)
        self.max_body = runtime.settings.max_body_bytes
        self.retry_after = str(runtime.settings.retry_after).encode()
        self.routes: dict[tuple[str, bool], Handler] = {
            ("POST", False): self.handlers.provider_callback,
            ("POST", True): self.handlers.job_callback,
            ("GET", True): self.handlers.job_nudge,
        }

    @staticmethod
    def takes(scope: Scope) -> bool:
        """Whether `scope` is a request for these routes."""
        path: str = scope.get("path", "")
        return scope["type"] == "http" and path.startswith(PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route = _route(scope["path"])
        provider, token = route if route is not None else ("", None)
        request = HookRequest(
            scope,
            send,
            request_id=new_id("req"),
            started=started,
            provider=provider,
            token=token,
            headers=headers_of(scope["headers"]),
            address=client_address(scope, self.runtime.trusted_proxies),
        )
        if route is None:
            await self._no_route(request, 404, _NO_ROUTE)
            return
        method: str = scope["method"]
        handle = self.routes.get((method, token is not None))
        if handle is not None:
            await self._guarded(request, receive, handle)
            return
        allow = [(b"allow", _ALLOW_TOKEN if token is not None else _ALLOW_PROVIDER)]
        if method == "OPTIONS":
            await answer(request, 204, b"", allow)
        else:
            await self._no_route(request, 405, _WRONG_METHOD, allow)

    async def _too_many(self, request: HookRequest, wait: int) -> None:
        await answer(request, 429, _TOO_MANY, [(b"retry-after", str(wait).encode())])

    async def _no_route(
        self, request: HookRequest, status: int, body: bytes, headers: Headers = ()
    ) -> None:
        """A path or method no hook route takes, counted like any other refusal.

        The address (and the token in the path) pay for it, and an address whose budget is
        spent gets 429 instead. Not kept, not logged: there is no route to speak of.
        """
        limiter, address, at = self.runtime.auth_failures, request.address, now()
        wait = address_wait(limiter, address, at)
        if wait is None:
            wait = charge(limiter, address, token_of(request.scope["path"]), at)
        if wait is not None:
            await self._too_many(request, wait)
        else:
            await answer(request, status, body, headers)

    async def _guarded(self, request: HookRequest, receive: Receive, handle: Handler) -> None:
        """Run one hook: read the body, then `handle`; answer, count and log what came of it.

        An address whose failure budget is spent is answered 429 before any work.
        """
        runtime, scope, limiter = self.runtime, request.scope, self.runtime.auth_failures
        label = provider_label(request.provider, runtime.settings.generic)
        bind(request_id=request.request_id, provider=label)
        at = now()
        if (wait := address_wait(limiter, request.address, at)) is not None:
            METRICS.callback(label, "rate_limited", time.perf_counter() - request.started)
            await self._too_many(request, wait)
            return
        outcome, status = "error", 500
        try:
            try:
                await self._read_body(request, receive)
                reply = await handle(request)
            except Reject as reject:
                outcome, status = await self._refuse(request, reject, at)
            else:
                outcome, status = reply.outcome, reply.status
                await answer(request, reply.status, _encode(reply.content))
        except StoreUnavailable as exc:
            # A provider seeing 503 retries after Retry-After.
            outcome, status = "unavailable", 503
            _app_log.warning("store unavailable on %s: %s", redact_path(scope["path"]), exc)
            await answer(request, 503, _UNAVAILABLE, [(b"retry-after", self.retry_after)])
        except _Disconnected:
            pass  # nobody to answer; counted as an error, as it always was
        except Exception as exc:
            # Logged for the operator (the path's token redacted); the caller learns nothing.
            path = redact_path(scope["path"])
            _app_log.error("unexpected error on %s %s", scope["method"], path, exc_info=exc)
            await answer(request, 500, _INTERNAL)
        finally:
            seconds = time.perf_counter() - request.started
            # The request inspector's status and latency, written after the answer.
            runtime.answers.note(request.request_id, status, seconds * 1000)
            METRICS.callback(label, outcome, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s -> %d %s in %.1f ms",
                    scope["method"],
                    redact_path(scope["path"]),
                    status,
                    outcome,
                    seconds * 1000,
                )

    async def _refuse(self, request: HookRequest, reject: Reject, at: float) -> tuple[str, int]:
        """Answer a refusal and keep it, or 429 once the token's budget is spent; the
        outcome and status it was answered with."""
        runtime = self.runtime
        if (wait := charge(runtime.auth_failures, request.address, request.token, at)) is not None:
            # Someone is hammering this job's URL: refuse without a quarantine write.
            await self._too_many(request, wait)
            return "rate_limited", 429
        await runtime.quarantine.keep(request.kept(), reject)
        body = _REFUSED.get(reject.status_code, b'{"error":"error"}')
        await answer(request, reject.status_code, body)
        return reject.reason, reject.status_code

    async def _read_body(self, request: HookRequest, receive: Receive) -> None:
        """Read the body into `request`, up to RECEIVER_MAX_BODY_BYTES.

        A declared length past the limit is refused before a byte is read; a body that
        passes it as it comes is cut there, its start kept for the quarantine.
        """
        declared = request.headers.get("content-length")
        if declared is not None:
            declared = declared.strip()
            if not (declared.isascii() and declared.isdigit()):
                raise Reject(400, "bad_content_length")
            if int(declared) > self.max_body:
                raise Reject(413, "too_large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                request.body = b"".join(chunks)[:UNPROVEN_BODY_BYTES]
                raise Reject(413, "too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
