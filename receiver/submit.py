"""Submitting jobs: mint the job's credentials, fill the callback fields, call the provider.

The job row is written before the provider is called, so a callback that races the
create answer still finds its job by token. A provider that refuses or fails the
create call leaves a failed job carrying the provider's error, which fires the
`failed` handlers like any other failure. A provider at its in-flight cap
(RECEIVER_<PROVIDER>_MAX_RUNNING, receiver.slots) keeps the job waiting for a slot; a
provider group (receiver.groups) moves a job refused by one member to the next.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from receiver.costs import Budget, Pricing
from receiver.errors import ConfigError, IdempotencyKeyReused, ProviderError
from receiver.groups import check_common, refused
from receiver.ingest import Ingest
from receiver.models import CREATE_UNCERTAIN, Job, Status, Update, new_id, now
from receiver.poller import gave_up
from receiver.provider_limits import ProviderLimits
from receiver.providers import CallbackStyle, ProviderGateway, get_provider, valid_task_id
from receiver.store.base import NewJob, Store, Write
from receiver.urls import http_url
from receiver.verify import digest, mint_secret, mint_token, redact_fields

__all__ = [
    "CREATE_UNCERTAIN",
    "Submitted",
    "Submitter",
    "check_idempotency_key",
    "check_notify_url",
    "queued_job",
    "request_digest",
]

log = logging.getLogger("receiver.submit")

# A 429 without Retry-After: how long to wait before the create is sent again.
_CREATE_WAIT = 30.0
# An admitted create is sent by its admitter; the poller sends it after this if not.
_ADMIT_LEASE = 60.0

# A job's URL token, webhook secret (if its provider echoes one) and callback URL.
Credentials = tuple[str, str | None, str | None]

_WITH_CALLBACKS = {CallbackStyle.SECRET_POST, CallbackStyle.POST, CallbackStyle.NUDGE}


_MAX_KEY = 255


def check_idempotency_key(key: str) -> str:
    """An Idempotency-Key: 1 to 255 printable ASCII characters (ConfigError, a 400, else)."""
    if not 1 <= len(key) <= _MAX_KEY or not all(" " <= char <= "~" for char in key):
        raise ConfigError(f"an idempotency key is 1 to {_MAX_KEY} printable ASCII characters")
    return key


def request_digest(provider: str, fields: Mapping[str, Any], **rest: Any) -> str:
    """A canonical digest of a submission (provider, input and the rest, keys sorted), so
    a key sent again with the same request is told from one sent with another."""
    canonical = {"provider": provider, "input": dict(fields), **rest}
    return hashlib.sha256(msgspec.json.encode(canonical, order="sorted")).hexdigest()


def queued_job(
    provider: str,
    task_id: str | None,
    metadata: Mapping[str, Any] | None = None,
    notify_url: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A new job, as it is before the provider has said anything about it."""
    at = now()
    return Job(
        id=new_id("job"),
        provider=provider,
        task_id=task_id,
        status=Status.QUEUED,
        metadata=dict(metadata or {}),
        created_at=at,
        updated_at=at,
        notify_url=notify_url,
        idempotency_key=idempotency_key,
    )


def check_notify_url(url: str) -> str:
    """A job's `notify_url`: absolute http(s), no credentials in it (posts are signed instead).

    Private and loopback addresses are allowed: whoever may call POST /jobs is an admin.
    """
    parsed = http_url(url)
    if parsed is None:
        raise ConfigError("notify_url must be an absolute http(s) URL")
    if "@" in parsed.netloc:
        raise ConfigError(
            "notify_url must not carry credentials: its posts are signed with"
            " RECEIVER_FORWARD_SECRET, and the URL is shown with the job"
        )
    return url


def _asked_to_wait(exc: ProviderError) -> float | None:
    """Seconds the provider asked us to wait before sending the create again, if it did:
    a 429 (with or without Retry-After), or a 503 with Retry-After."""
    if exc.status_code == 429:
        return _CREATE_WAIT if exc.retry_after is None else exc.retry_after
    if exc.status_code == 503 and exc.retry_after is not None:
        return exc.retry_after
    return None


class Submitted(msgspec.Struct, kw_only=True):
    """A submitted job. `hook_url` carries the job's token and is shown only here, once.

    `replayed`: the idempotency key had made this job already; nothing was sent this time.
    """

    job: Job
    hook_url: str | None = None
    replayed: bool = False


class Submitter:
    """Creates jobs at providers and records them."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        gateways: Mapping[str, ProviderGateway],
        *,
        public_url: str,
        poll_interval: float,
        deadline_for: Callable[[str], float] = lambda provider: 900.0,
        give_up_for: Callable[[str], float] = lambda provider: 86400.0,
        wake_poller: Any = None,
        notify_secret: bool = False,
        pricing: Pricing | None = None,
        max_running: Mapping[str, int] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        limits: Mapping[str, ProviderLimits] | None = None,
    ):
        self.store = store
        self.ingest = ingest
        self.gateways = gateways
        self.public_url = public_url.rstrip("/")
        self.poll_interval = poll_interval
        self.deadline_for = deadline_for
        self.give_up_for = give_up_for
        self.wake_poller = wake_poller or (lambda: None)
        self.notify_secret = notify_secret  # whether a forward secret can sign notify_url posts
        self.pricing = pricing
        self.max_running = dict(max_running or {})  # provider -> RECEIVER_<P>_MAX_RUNNING
        self.groups = {name: tuple(members) for name, members in (groups or {}).items()}
        self.limits = limits or {}  # the poller's: a member whose circuit is open is passed
        # Wakes the slot keeper for a provider (receiver.slots; the runtime sets it).
        self.wake_slots: Callable[[str], None] = lambda provider: None
        self._admitting: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )

    def _notify_url(self, url: str | None) -> str | None:
        if url is None:
            return None
        if not self.notify_secret:
            raise ConfigError("notify_url needs RECEIVER_FORWARD_SECRET, which signs its posts")
        return check_notify_url(url)

    def _gateway(self, provider: str) -> ProviderGateway:
        adapter = get_provider(provider)  # UnknownProvider for a bad name
        gateway = self.gateways[adapter.name]
        gateway.configured_base_url()  # refused before a job is made
        return gateway

    async def submit(
        self,
        provider: str,
        fields: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        local_files: bool = False,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Create a job at `provider`; a provider's refusal gives a failed job, not an error.

        `notify_url` gets every event of this job, signed as the forward handler signs.
        With `idempotency_key`, a request already made under that key answers its job
        (`replayed`) and calls no provider; the key with another request raises
        IdempotencyKeyReused.
        """
        notify_url = self._notify_url(notify_url)
        key, request_hash = self._keyed(
            idempotency_key, provider, fields, metadata=metadata, notify_url=notify_url
        )
        if key is not None and (done := await self._replayed(key, request_hash)) is not None:
            return Submitted(job=done, replayed=True)
        group = self.groups.get(provider)
        if group is not None:
            check_common(provider, fields)
            gateway = self._first_member(provider, group)
            uploads: list[str] = []
        else:
            gateway = self._gateway(provider)
            uploads = sorted(gateway.adapter.file_fields & fields.keys())
        if uploads and not local_files:
            # Over HTTP a file path would let a caller make us read and upload any local file.
            raise ConfigError(
                f"{provider} file fields ({', '.join(uploads)}) can only be sent from the CLI"
            )
        token, secret, hook_url = self._credentials(gateway)
        job = queued_job(gateway.adapter.name, None, metadata, notify_url, key)
        if group is not None:
            job.provider_group = provider
        budgets: tuple[Budget, ...] = ()
        if self.pricing is not None:
            job.estimated_cost = self._estimate(provider, fields)
            budgets = self.pricing.budgets(job.metadata)
        new = NewJob(
            job=job,
            token_hash=digest(token),
            secret_hash=digest(secret) if secret else None,
            input=redact_fields(fields),
            budgets=budgets,
            request_hash=request_hash,
        )
        # BudgetExceeded here leaves no job, and the provider is never called.
        if not await self.store.create_job(new):  # a concurrent request with the key won
            return Submitted(job=await self._winner(key, request_hash), replayed=True)
        # A local file is read where it was named: a later retry may run elsewhere.
        return await self._start(job, gateway, fields, (token, secret, hook_url), not uploads)

    async def _start(
        self,
        job: Job,
        gateway: ProviderGateway,
        fields: Mapping[str, Any],
        credentials: Credentials,
        deferrable: bool = True,
        *,
        admit_now: bool = True,
    ) -> Submitted:
        """Send a recorded job's create now, or, past its provider's cap, keep it waiting
        for a slot (sent oldest first as slots free, by whichever process frees one).

        Without `admit_now` (a group's job moving on, maybe inside another provider's
        admission) the slot keeper is woken instead: admissions never wait on each other.
        """
        _token, secret, hook_url = credentials
        if job.provider not in self.max_running:
            return await self._send(job, gateway, fields, hook_url, secret, deferrable=deferrable)
        give_up_at = job.created_at + self.give_up_for(job.provider)
        await self.store.hold_for_slot(job.id, fields, give_up_at)
        if admit_now:
            sent = await self.admit(job.provider, own=(job.id, credentials))
            if sent is not None:
                return sent
        else:
            self.wake_slots(job.provider)
        log.info("%s is at its cap; %s waits for a slot", job.provider, job.id)
        stored = await self.store.get_job(job.id)
        return Submitted(job=stored or job, hook_url=hook_url)

    async def admit(
        self, provider: str, own: tuple[str, Credentials] | None = None
    ) -> Submitted | None:
        """Admit the jobs waiting for a slot at `provider` that fit under its cap and send
        them, oldest first, one after the other (receiver.slots, and each submission).

        `own`, a job this call's submission just made, keeps the credentials minted for
        it; its answer is returned when it was admitted.
        """
        cap = self.max_running.get(provider)
        if cap is None:
            return None
        mine = None
        async with self._admitting[provider]:  # this process's admissions go out in order
            for job_id in await self.store.admit_creates(
                provider, cap, at=now(), lease=_ADMIT_LEASE
            ):
                job = await self.store.get_job(job_id)
                if job is None:
                    continue
                if own is not None and job_id == own[0]:
                    mine = await self._resend(job, own[1])
                else:
                    await self._resend(job)
        return mine

    async def retry_create(self, job: Job) -> None:
        """Send again a create the provider asked us to repeat later (the poller, when due).

        Each try gets a fresh URL token and secret: the refused one reached nobody.
        """
        await self._resend(job)

    async def _resend(self, job: Job, credentials: Credentials | None = None) -> Submitted | None:
        """Take a waiting create (None if another process did) and send it."""
        gateway = self.gateways.get(job.provider)
        if gateway is None:
            return None
        give_up_after = self.give_up_for(job.provider)
        token, secret, hook_url = credentials or self._credentials(gateway)
        fields = await self.store.begin_create_retry(
            job.id,
            token_hash=digest(token),
            secret_hash=digest(secret) if secret else None,
            next_poll_at=job.created_at + give_up_after,
        )
        if fields is None:
            return None  # another process took it
        if now() >= job.created_at + give_up_after:
            failure = gave_up(job.provider, give_up_after)
            recorded = await self.ingest.record(
                Write(update=failure, source="receiver", job_id=job.id)
            )
            return Submitted(job=recorded.job)
        return await self._send(job, gateway, fields, hook_url, secret, deferrable=True)

    def _first_member(self, group: str, members: Sequence[str]) -> ProviderGateway:
        """The gateway of the group's first member that can take a job now."""
        usable = self._usable(members) or [m for m in members if self._configured(m)]
        if not usable:
            raise ConfigError(
                f"no provider of group {group} is configured (RECEIVER_<PROVIDER>_BASE_URL)"
            )
        return self.gateways[usable[0]]

    def _usable(self, members: Sequence[str]) -> list[str]:
        """The configured members, in order, whose circuit is not open."""
        at = now()
        return [
            name
            for name in members
            if self._configured(name)
            and not (name in self.limits and self.limits[name].is_open(at))
        ]

    def _configured(self, name: str) -> bool:
        gateway = self.gateways.get(name)
        return gateway is not None and gateway.missing_setting() is None

    def _estimate(self, provider: str, fields: Mapping[str, Any]) -> float | None:
        """The job's expected cost; for a group, the most any member would cost."""
        assert self.pricing is not None
        group = self.groups.get(provider)
        if group is None:
            return self.pricing.estimate(provider, fields)
        costs = []
        for name in group:
            try:
                mapped = self.gateways[name].adapter.common_request(fields)
            except (KeyError, ProviderError):
                continue
            costs.append(self.pricing.estimate(name, mapped))
        known = [cost for cost in costs if cost is not None]
        return max(known) if known else None

    async def _refused(
        self, job: Job, fields: Mapping[str, Any], error: str, status_code: int | None
    ) -> Submitted:
        """A create the provider certainly did not take: the group's next member gets the
        job, or, with none left (or no group), it fails with the provider's error."""
        if job.provider_group is not None:
            members = self.groups.get(job.provider_group, ())
            after = members[members.index(job.provider) + 1 :] if job.provider in members else ()
            for name in self._usable(after):
                gateway = self.gateways[name]
                token, secret, hook_url = self._credentials(gateway)
                moved = await self.store.switch_provider(
                    job.id,
                    name,
                    token_hash=digest(token),
                    secret_hash=digest(secret) if secret else None,
                )
                if not moved:
                    break
                log.warning(
                    "%s refused %s of group %s (%s); trying %s",
                    job.provider,
                    job.id,
                    job.provider_group,
                    error,
                    name,
                )
                job = msgspec.structs.replace(job, provider=name, create_state=None)
                credentials = (token, secret, hook_url)
                return await self._start(job, gateway, fields, credentials, admit_now=False)
        return await self._failed(job, error, status_code)

    def _credentials(self, gateway: ProviderGateway) -> tuple[str, str | None, str | None]:
        """A fresh URL token, webhook secret (if the provider echoes one) and callback URL."""
        provider = gateway.adapter.name
        style = gateway.adapter.callback_style
        token = mint_token()
        secret = mint_secret() if style is CallbackStyle.SECRET_POST else None
        hook_url = (
            f"{self.public_url}/hooks/{provider}/{token}" if style in _WITH_CALLBACKS else None
        )
        return token, secret, hook_url

    async def _send(
        self,
        job: Job,
        gateway: ProviderGateway,
        fields: Mapping[str, Any],
        hook_url: str | None,
        secret: str | None,
        *,
        deferrable: bool,
    ) -> Submitted:
        """Call the provider's create for a recorded job and record what it answered.

        A group's job carries the group's common fields, mapped here for its provider.
        """
        try:
            own = gateway.adapter.common_request(fields) if job.provider_group else fields
        except ProviderError as exc:  # this member cannot express them: it was never called
            return await self._refused(job, fields, str(exc), None)
        try:
            created = await gateway.create(own, hook_url=hook_url, webhook_secret=secret)
        except ProviderError as exc:
            wait = _asked_to_wait(exc)
            if wait is not None and deferrable:
                return await self._deferred(job, fields, wait, hook_url)
            if exc.outcome_unknown:
                return await self._uncertain(job, str(exc), hook_url)
            if refused(exc):
                return await self._refused(job, fields, str(exc), exc.status_code)
            return await self._failed(job, str(exc), exc.status_code)
        except Exception as exc:
            # Input the adapter could not turn into a request (a list where a name belongs,
            # an unreadable upload): still a failed job with a reason, never a crash.
            log.warning("create request for %s failed: %s", job.id, type(exc).__name__)
            return await self._failed(job, f"could not build the request: {exc}"[:500], None)
        if job.create_state is not None:  # a retry that got its answer
            await self.store.set_create_state(job.id, None, None)
        if created.task_id is not None:
            await self.store.set_task_id(job.id, created.task_id, self._first_poll(gateway))
            self.wake_poller()  # a callback that came first may be waiting for its pull
        if created.update is not None:
            recorded = await self.ingest.record(
                Write(update=created.update, source="submit", job_id=job.id)
            )
            return Submitted(job=recorded.job, hook_url=hook_url)
        stored = await self.store.get_job(job.id)
        return Submitted(job=stored or job, hook_url=hook_url)

    async def _deferred(
        self, job: Job, fields: Mapping[str, Any], wait: float, hook_url: str | None
    ) -> Submitted:
        """The provider asked us to send the create later (429, or 503 with Retry-After):
        the job stays queued, and the poller sends it again when asked, restarts or not."""
        log.info("%s asked to wait %.0f s before creating %s", job.provider, wait, job.id)
        at = now() + wait + random.uniform(0, min(1.0, wait / 10))
        await self.store.defer_create(job.id, fields, at)
        self.wake_poller()
        stored = await self.store.get_job(job.id)
        return Submitted(job=stored or job, hook_url=hook_url)

    @staticmethod
    def _keyed(
        key: str | None, provider: str, fields: Mapping[str, Any], **rest: Any
    ) -> tuple[str | None, str | None]:
        """The checked key and the request's digest; (None, None) without a key."""
        if key is None:
            return None, None
        return check_idempotency_key(key), request_digest(provider, fields, **rest)

    async def _replayed(self, key: str, request_hash: str | None) -> Job | None:
        """The job `key` made already, if any; IdempotencyKeyReused if from another request."""
        found = await self.store.job_by_idempotency_key(key)
        if found is None:
            return None
        if found.request_hash != request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request"
                f" (job {found.job.id}); use a new key for a new request"
            )
        return found.job

    async def _winner(self, key: str | None, request_hash: str | None) -> Job:
        """The job of the request that took `key` first (its insert is committed)."""
        assert key is not None, "only a keyed insert can be refused"
        job = await self._replayed(key, request_hash)
        if job is None:  # its job was deleted in between: retention, long after
            raise IdempotencyKeyReused("this Idempotency-Key's job is gone; use a new key")
        return job

    def _first_poll(self, gateway: ProviderGateway) -> float | None:
        """Pull-only jobs are polled soon; others only if no callback comes by the deadline."""
        if not gateway.adapter.can_pull:
            return None
        if gateway.adapter.callback_style is CallbackStyle.POLL:
            return now() + self.poll_interval
        return now() + self.deadline_for(gateway.adapter.name)

    async def _uncertain(self, job: Job, reason: str, hook_url: str | None) -> Submitted:
        """The create call was sent and no clear answer came: the provider may have the task.

        Never sent again (that could pay twice) and not failed: the job stays queued, its
        URL token still takes callbacks, and the first genuine callback or status answer
        that names the task gives it its task id. With no news by its give-up age the
        poller fails it as `create_uncertain`.
        """
        log.warning(
            "create of %s at %s had no clear answer (%s); waiting for its callbacks",
            job.id,
            job.provider,
            reason,
        )
        give_up_at = job.created_at + self.give_up_for(job.provider)
        await self.store.set_create_state(job.id, CREATE_UNCERTAIN, give_up_at)
        self.wake_poller()
        stored = await self.store.get_job(job.id)
        return Submitted(job=stored or job, hook_url=hook_url)

    async def _failed(self, job: Job, error: str, status_code: int | None) -> Submitted:
        failure = Update(
            status=Status.FAILED,
            raw_status="create_failed",
            error=error,
            error_code=str(status_code) if status_code else None,
        )
        recorded = await self.ingest.record(Write(update=failure, source="submit", job_id=job.id))
        return Submitted(job=recorded.job)

    async def track(
        self,
        provider: str,
        task_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Follow a task submitted elsewhere: record it and poll it when the provider allows.

        A task already followed answers its job; so does a key already used (`replayed`).
        """
        notify_url = self._notify_url(notify_url)
        key, request_hash = self._keyed(
            idempotency_key, provider, {}, metadata=metadata, notify_url=notify_url, task=task_id
        )
        if key is not None and (done := await self._replayed(key, request_hash)) is not None:
            return Submitted(job=done, replayed=True)
        adapter = get_provider(provider)
        if not valid_task_id(task_id):
            raise ConfigError("task_id must be a plain token of letters, digits and ._:-")
        existing = await self.store.job_by_task(provider, task_id)
        if existing is not None:
            return Submitted(job=existing)
        job = queued_job(provider, task_id, metadata, notify_url, key)
        new = NewJob(
            job=job,
            next_poll_at=job.created_at if adapter.can_pull else None,
            request_hash=request_hash,
        )
        if not await self.store.create_job(new):
            return Submitted(job=await self._winner(key, request_hash), replayed=True)
        self.wake_poller()
        return Submitted(job=job)
