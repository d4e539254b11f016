"""Submitting jobs: mint the job's credentials, fill the callback fields, call the provider.

The job row is written before the provider is called, so a callback that races the
create answer still finds its job by token. A provider that refuses or fails the
create call leaves a failed job carrying the provider's error, which fires the
`failed` handlers like any other failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from receiver.costs import Budget, Pricing
from receiver.errors import ConfigError, ProviderError
from receiver.ingest import Ingest
from receiver.models import Job, Status, Update, new_id, now
from receiver.providers import CallbackStyle, ProviderGateway, get_provider, valid_task_id
from receiver.store.base import NewJob, Store
from receiver.urls import http_url
from receiver.verify import digest, mint_secret, mint_token, redact_fields

__all__ = ["Submitted", "Submitter", "check_notify_url", "queued_job"]

log = logging.getLogger("receiver.submit")

_WITH_CALLBACKS = {CallbackStyle.SECRET_POST, CallbackStyle.POST, CallbackStyle.NUDGE}


def queued_job(
    provider: str,
    task_id: str | None,
    metadata: Mapping[str, Any] | None = None,
    notify_url: str | None = None,
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


class Submitted(msgspec.Struct, kw_only=True):
    """A submitted job. `hook_url` carries the job's token and is shown only here, once."""

    job: Job
    hook_url: str | None = None


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
        wake_poller: Any = None,
        notify_secret: bool = False,
        pricing: Pricing | None = None,
    ):
        self.store = store
        self.ingest = ingest
        self.gateways = gateways
        self.public_url = public_url.rstrip("/")
        self.poll_interval = poll_interval
        self.deadline_for = deadline_for
        self.wake_poller = wake_poller or (lambda: None)
        self.notify_secret = notify_secret  # whether a forward secret can sign notify_url posts
        self.pricing = pricing

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
    ) -> Submitted:
        """Create a job at `provider`; a provider's refusal gives a failed job, not an error.

        `notify_url` gets every event of this job, signed as the forward handler signs.
        """
        notify_url = self._notify_url(notify_url)
        gateway = self._gateway(provider)
        uploads = sorted(gateway.adapter.file_fields & fields.keys())
        if uploads and not local_files:
            # Over HTTP a file path would let a caller make us read and upload any local file.
            raise ConfigError(
                f"{provider} file fields ({', '.join(uploads)}) can only be sent from the CLI"
            )
        style = gateway.adapter.callback_style
        token = mint_token()
        secret = mint_secret() if style is CallbackStyle.SECRET_POST else None
        hook_url = (
            f"{self.public_url}/hooks/{provider}/{token}" if style in _WITH_CALLBACKS else None
        )
        job = queued_job(provider, None, metadata, notify_url)
        budgets: tuple[Budget, ...] = ()
        if self.pricing is not None:
            job.estimated_cost = self.pricing.estimate(provider, fields)
            budgets = self.pricing.budgets(job.metadata)
        # BudgetExceeded here leaves no job, and the provider is never called.
        await self.store.create_job(
            NewJob(
                job=job,
                token_hash=digest(token),
                secret_hash=digest(secret) if secret else None,
                input=redact_fields(fields),
                budgets=budgets,
            )
        )
        try:
            created = await gateway.create(fields, hook_url=hook_url, webhook_secret=secret)
        except ProviderError as exc:
            return await self._failed(job, str(exc), exc.status_code)
        except Exception as exc:
            # Input the adapter could not turn into a request (a list where a name belongs,
            # an unreadable upload): still a failed job with a reason, never a crash.
            log.warning("create request for %s failed: %s", job.id, type(exc).__name__)
            return await self._failed(job, f"could not build the request: {exc}"[:500], None)
        if created.task_id is not None:
            await self.store.set_task_id(job.id, created.task_id, self._first_poll(gateway))
            self.wake_poller()  # a callback that came first may be waiting for its pull
        if created.update is not None:
            recorded = await self.ingest.record(job.id, created.update, source="submit")
            return Submitted(job=recorded.job, hook_url=hook_url)
        stored = await self.store.get_job(job.id)
        return Submitted(job=stored or job, hook_url=hook_url)

    def _first_poll(self, gateway: ProviderGateway) -> float | None:
        """Pull-only jobs are polled soon; others only if no callback comes by the deadline."""
        if not gateway.adapter.can_pull:
            return None
        if gateway.adapter.callback_style is CallbackStyle.POLL:
            return now() + self.poll_interval
        return now() + self.deadline_for(gateway.adapter.name)

    async def _failed(self, job: Job, error: str, status_code: int | None) -> Submitted:
        failure = Update(
            status=Status.FAILED,
            raw_status="create_failed",
            error=error,
            error_code=str(status_code) if status_code else None,
        )
        recorded = await self.ingest.record(job.id, failure, source="submit")
        return Submitted(job=recorded.job)

    async def track(
        self,
        provider: str,
        task_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        notify_url: str | None = None,
    ) -> Job:
        """Follow a task submitted elsewhere: record it and poll it when the provider allows."""
        notify_url = self._notify_url(notify_url)
        adapter = get_provider(provider)
        if not valid_task_id(task_id):
            raise ConfigError("task_id must be a plain token of letters, digits and ._:-")
        existing = await self.store.job_by_task(provider, task_id)
        if existing is not None:
            return existing
        job = queued_job(provider, task_id, metadata, notify_url)
        await self.store.create_job(
            NewJob(job=job, next_poll_at=job.created_at if adapter.can_pull else None)
        )
        self.wake_poller()
        return job
