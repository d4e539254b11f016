"""What each hook route does with a request whose body has been read: verify, parse, record.

- `POST /hooks/{provider}` (`provider_callback`): a task submitted elsewhere, proven by the
  provider's static secret header, or for a generic provider by its Standard Webhooks
  signature over the raw body.
- `POST /hooks/{provider}/{token}` (`job_callback`): a job's own URL, for every provider.
  The job is looked up by its token inside the write (`Store.record_by_token`), and the
  rules that need the job (its provider, its secret, its task id) are checked there, so a
  callback costs one store write and no read before it. The rare cases that need more (a
  create with no clear answer, whose task id the callback reveals; a final state to confirm
  with the provider's status API) take a second step after the write refused the first.
- `GET /hooks/{provider}/{token}` (`job_nudge`): a nudge; it schedules a pull, carries no
  data, and is looked up inside its write too (`Store.record_nudge_by_token`).

A refusal is raised as `Reject`; receiver.hooks answers it, keeps it in the quarantine and
charges the caller's failure budget. Nothing here imports the web framework.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import msgspec

from receiver.asgi import Scope, Send
from receiver.callbacks import Reject, kept_request, overdue_at, parse_callback
from receiver.logs import bind
from receiver.models import Job, RawRequest, Update, now
from receiver.providers import CallbackStyle, GenericProvider, Provider, valid_task_id
from receiver.runtime import Runtime
from receiver.standard_webhooks import MISSING_SIGNATURE, SignatureError
from receiver.store.base import NewJob, Recorded, TokenMatch, Write
from receiver.submit import CREATE_UNCERTAIN, queued_job
from receiver.verify import digest, matches_digests

__all__ = [
    "HookHandlers",
    "HookRequest",
    "Reply",
    "nudge_uuid",
    "secret_refusal",
    "skew_detail",
]

log = logging.getLogger("receiver.hooks")

_UUID_PARAM = re.compile(r"(?:^|[?&;])uuid=([^&?;#]*)")


class HookRequest:
    """One hook request being answered: what the routes read of it, and its answer so far.

    `request_id` and `started` are the request's from its first byte to the answer, which
    receiver.hooks writes (and counts) in one place.
    """

    __slots__ = (
        "address",
        "body",
        "headers",
        "provider",
        "request_id",
        "scope",
        "send",
        "started",
        "status",
        "token",
    )

    def __init__(
        self,
        scope: Scope,
        send: Send,
        *,
        request_id: str,
        started: float,
        provider: str,
        token: str | None,
        headers: dict[str, str],
        address: str | None,
    ):
        self.scope = scope
        self.send = send
        self.request_id = request_id
        self.started = started
        self.provider = provider
        self.token = token
        self.headers = headers
        self.address = address
        self.body = b""
        self.status = 0  # none sent yet

    def kept(self) -> RawRequest:
        """The request as it is stored, redacted and capped (receiver.callbacks)."""
        return kept_request(
            self.scope,
            request_id=self.request_id,
            provider=self.provider,
            headers=self.headers,
            body=self.body,
            client=self.address,
        )


class Reply(msgspec.Struct, frozen=True):
    """A successful answer: its status, its JSON content, and the outcome counted for it."""

    status: int
    content: dict[str, Any]
    outcome: str = "accepted"


Handler = Callable[[HookRequest], Awaitable[Reply]]


def nudge_uuid(query: str) -> str | None:
    """The `uuid` of a nudge, also when it was glued on with a second `?` (`?token=a?uuid=X`)."""
    match = _UUID_PARAM.search(query)
    if match is None:
        return None
    return unquote(match.group(1)) or None


def secret_refusal(offered: str | None, *digests: str | None) -> Reject | None:
    """None when x-webhook-secret matches one of `digests` (the job's, the provider's static
    one); otherwise the 401 to answer. Every digest is compared, so timing tells nothing."""
    if offered is None:
        return Reject(401, "missing_secret")
    return None if matches_digests(offered, digests) else Reject(401, "wrong_secret")


def skew_detail(exc: SignatureError, adapter: GenericProvider) -> str | None:
    """What the quarantine shows beside the reason: the absent headers, or the clock skew."""
    if exc.reason == MISSING_SIGNATURE:
        return str(exc)  # only our fixed header names
    if exc.skew is None:
        return None
    side = "behind" if exc.skew < 0 else "ahead of"
    tolerance = adapter.settings.tolerance
    return f"timestamp {abs(exc.skew)} s {side} this clock (tolerance {tolerance:g} s)"


def _signed(adapter: GenericProvider, request: HookRequest) -> Update:
    """A Standard Webhooks message, verified on the raw bytes before it is parsed.

    The webhook-id becomes the update's delivery id, so a redelivery is a duplicate. A
    refusal is quarantined with its reason (and a clock skew in seconds), answered 401 bare.
    """
    try:
        msg_id = adapter.authenticate(request.body, request.headers)
    except SignatureError as exc:
        log.info("%s: rejected a Standard Webhooks message: %s", adapter.name, exc)
        raise Reject(401, exc.reason, detail=skew_detail(exc, adapter)) from None
    return msgspec.structs.replace(parse_callback(adapter, request.body), delivery_id=msg_id)


def _unconfirmed(update: Update) -> Update:
    """What an unconfirmed body may say: its status and progress. URLs, the error and the
    task id come only from the status API (the body is still kept with the event)."""
    return msgspec.structs.replace(
        update, task_id=None, result_url=None, preview_url=None, error=None, error_code=None
    )


def _adoptable(job: Job, task_id: str | None) -> bool:
    """Whether `job`, whose create had no clear answer, may take `task_id` (see `_adopt`)."""
    return job.task_id is None and job.create_state == CREATE_UNCERTAIN and valid_task_id(task_id)


def _recorded(recorded: Recorded) -> Reply:
    bind(job_id=recorded.job.id)
    event = recorded.event
    disposition = event.disposition.value
    return Reply(200, {"ok": True, "event": event.id, "disposition": disposition}, disposition)


class _Verdict:
    """What `job_callback`'s check inside the write saw: the job, and why it said no."""

    __slots__ = ("job", "next", "refusal")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.refusal: Reject | None = None
        self.next: str | None = None  # "adopt" or "confirm": a second step, after the write

    def found(self, provider: str) -> Job:
        """The job the write refused, when the refusal only asks for a second step;
        otherwise the refusal (404 when no job of `provider` has the token)."""
        job = self.job
        if job is None or job.provider != provider:
            raise self.refusal or Reject(404, "unknown_token")
        bind(job_id=job.id)
        if self.refusal is not None:
            raise self.refusal
        return job


class HookHandlers:
    """The three hook routes over `runtime`; the static secrets' digests made once."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.static: dict[str, str] = {}  # provider -> its static secret's digest
        for name in runtime.providers:
            secret = runtime.settings.provider(name).webhook_secret
            if secret:
                self.static[name] = digest(secret)

    def _adapter(self, provider: str) -> Provider:
        adapter = self.runtime.providers.get(provider)
        if adapter is None:
            raise Reject(404, "unknown_provider")
        return adapter

    def _confirming(self, adapter: Provider) -> bool:
        """Whether this provider's callbacks are believed only as far as its status API agrees.

        An unauthenticated POST is vouched for by the job's URL token alone: a leaked token
        must not be able to end a job, or give it a result or preview URL of its choosing.
        """
        settings = self.runtime.settings.provider(adapter.name)
        return (
            adapter.callback_style is CallbackStyle.POST
            and settings.confirm_terminal
            and adapter.can_pull
            and bool(settings.base_url)
        )

    async def _adopt(self, job: Job, task_id: str | None) -> Job:
        """A job whose create had no clear answer takes the task id its own URL reveals.

        The URL token is the credential, as for the callback itself; what the task says is
        still believed only as far as the rest of the pipeline (and the status API) allows.
        """
        if not _adoptable(job, task_id) or task_id is None:
            return job
        runtime = self.runtime
        if await runtime.store.job_by_task(job.provider, task_id) is not None:
            return job  # another job's task: never two jobs for one task
        log.info("%s: %s adopts task %s from its callback", job.provider, job.id, task_id)
        await runtime.store.set_task_id(job.id, task_id, None)
        runtime.poller.wake()
        return msgspec.structs.replace(job, task_id=task_id)

    async def _job_by_token(self, request: HookRequest) -> TokenMatch:
        """The job of the URL's token, read on its own: for nudges and refusals only."""
        assert request.token is not None
        match = await self.runtime.store.job_by_token(digest(request.token))
        if match is None or match.job.provider != request.provider:
            raise Reject(404, "unknown_token")
        bind(job_id=match.job.id)
        return match

    async def _confirm(self, job: Job, raw: RawRequest) -> Reply:
        """Keep a final state the status API must confirm, and have the provider asked.

        Before the create call has answered there is no task id to ask about: the pull
        waits for it (Store.set_task_id).
        """
        await self.runtime.store.record_nudge(job.id, raw, poll_at=now())
        self.runtime.poller.wake()
        return Reply(202, {"ok": True, "confirming": True})

    async def provider_callback(self, request: HookRequest) -> Reply:
        """A callback for a task submitted by another tool, proven by the provider's static
        secret or, for a generic provider, its signature; an unknown task makes a job."""
        provider = request.provider
        adapter = self._adapter(provider)
        if isinstance(adapter, GenericProvider):
            update = _signed(adapter, request)
        else:
            static = self.static.get(provider)
            if static is None:
                raise Reject(404, "static_route_disabled")
            if refusal := secret_refusal(request.headers.get("x-webhook-secret"), static):
                raise refusal
            update = parse_callback(adapter, request.body)
        if not valid_task_id(update.task_id):
            raise Reject(400, "no_task_id")
        runtime = self.runtime
        recorded = await runtime.ingest.record(
            Write(
                update=update,
                source="callback",
                raw=request.kept(),
                new_job=NewJob(job=queued_job(provider, update.task_id)),
                next_poll_at=overdue_at(runtime, adapter),
            )
        )
        return _recorded(recorded)

    async def job_callback(self, request: HookRequest) -> Reply:
        """A provider's callback to a job's own URL, looked up and checked inside the write."""
        runtime, provider = self.runtime, request.provider
        assert request.token is not None
        adapter = self._adapter(provider)
        offered = request.headers.get("x-webhook-secret")
        by_secret = adapter.callback_style is CallbackStyle.SECRET_POST
        static = self.static.get(provider)
        if isinstance(adapter, GenericProvider):
            update = _signed(adapter, request)  # refused before any lookup, as always
        else:
            try:
                update = parse_callback(adapter, request.body)
            except Reject:
                # A bad body's answer depends on the URL (404, then 401, then 400): a read
                # is paid here, on the refusal, never on an accepted callback.
                match = await self._job_by_token(request)
                if by_secret and (refusal := secret_refusal(offered, match.secret_hash, static)):
                    raise refusal from None
                raise
        confirming = self._confirming(adapter)
        verdict = _Verdict()

        def accept(match: TokenMatch) -> bool:
            # Runs inside the write, between its statements: it only looks at the match.
            job = verdict.job = match.job
            verdict.refusal = verdict.next = None
            if job.provider != provider:
                verdict.refusal = Reject(404, "unknown_token")
            elif by_secret and (refusal := secret_refusal(offered, match.secret_hash, static)):
                verdict.refusal = refusal
            elif update.task_id and job.task_id and update.task_id != job.task_id:
                verdict.refusal = Reject(400, "task_mismatch")
            elif _adoptable(job, update.task_id):
                verdict.next = "adopt"
            elif confirming and update.status.terminal and not job.status.terminal:
                verdict.next = "confirm"
            return verdict.refusal is None and verdict.next is None

        written = _unconfirmed(update) if confirming else update
        raw, next_poll_at = request.kept(), overdue_at(runtime, adapter)
        token_hash = digest(request.token)
        recorded = await runtime.ingest.record_by_token(
            token_hash,
            accept,
            Write(update=written, source="callback", raw=raw, next_poll_at=next_poll_at),
        )
        if recorded is not None:
            return _recorded(recorded)
        job = verdict.found(provider)
        if verdict.next == "adopt":
            job = await self._adopt(job, update.task_id)
        if confirming and update.status.terminal and not job.status.terminal:
            return await self._confirm(job, raw)
        recorded = await runtime.ingest.record(
            Write(
                update=written,
                source="callback",
                raw=raw,
                job_id=job.id,
                next_poll_at=next_poll_at,
            )
        )
        return _recorded(recorded)

    async def job_nudge(self, request: HookRequest) -> Reply:
        """A bare GET that only says "ask me": schedule a pull of the job's status.

        Looked up inside the write, as a callback to the job's URL is.
        """
        runtime, provider = self.runtime, request.provider
        assert request.token is not None
        adapter = self._adapter(provider)
        uuid = nudge_uuid(request.scope.get("query_string", b"").decode("latin-1"))
        verdict = _Verdict()

        def accept(match: TokenMatch) -> bool:
            job = verdict.job = match.job
            verdict.refusal = verdict.next = None
            if job.provider != provider:
                verdict.refusal = Reject(404, "unknown_token")
            elif not adapter.can_pull:
                verdict.refusal = Reject(405, "no_status_api")
            elif uuid is not None and (
                not valid_task_id(uuid) or (job.task_id and uuid != job.task_id)
            ):
                verdict.refusal = Reject(400, "task_mismatch")
            elif _adoptable(job, uuid):
                verdict.next = "adopt"
            return verdict.refusal is None and verdict.next is None

        raw = request.kept()
        token_hash = digest(request.token)
        nudged = await runtime.store.record_nudge_by_token(token_hash, accept, raw, poll_at=now())
        if nudged is None:
            job = await self._adopt(verdict.found(provider), uuid)
            await runtime.store.record_nudge(job.id, raw, poll_at=now())
        else:
            bind(job_id=nudged.id)
        runtime.poller.wake()
        return Reply(202, {"ok": True})
