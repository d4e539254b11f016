"""`POST /jobs/{id}/trigger`: put a job in a status with a realistic provider statement.

This is what `receiver trigger` and the testing kit call. The receiver cannot rebuild a
job's callback URL (its token is stored only as a digest), so instead of posting to it,
an admin asks the receiver itself: the provider's own body for that status is built
(the simulator's renderings of each provider's documents), read by the provider's real
adapter, and recorded through the same path as a callback, so the state machine, dedupe
and handlers behave as for the real thing. The admin token is the credential, as for
every `/jobs` route; the event is marked `source="trigger"` and its raw request kept,
so a triggered event is never mistaken for one a provider sent.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
from litestar import Request, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from receiver.api import admin_guard, document_errors
from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import RawRequest, Status, Update, new_id, now
from receiver.providers import PROVIDERS, get_provider
from receiver.ratelimit import client_address
from receiver.runtime import Runtime
from receiver.simulator.payloads import PHASES, Kind, Payload, payload_for
from receiver.store.base import Write
from receiver.verify import redact_headers
from receiver.wire import ErrorBody

__all__ = ["SANDBOX_ROUTES", "TriggerRequest", "TriggerResult", "default_media_base"]

_PREVIEWS = {"rixapi": "jpg", "aivideoapi": "gif", "artvisum": "jpg"}
SANDBOX_SIMULATOR = "http://127.0.0.1:9000"  # where `receiver simulate` listens by default


class TriggerRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The status to put the job in; URLs default to media served by the simulator."""

    status: str
    provider: str | None = None  # when given, must be the job's provider
    progress: float | None = None  # 0..1, for running
    result_url: str | None = None
    preview_url: str | None = None
    wrapped: bool = False  # rixapi: the `{code, msg, data}` form


class TriggerResult(msgspec.Struct, kw_only=True):
    """The event the statement became, and the provider body it was built from."""

    job_id: str
    event_id: str
    disposition: str
    status: Status
    handlers: list[str]
    provider: str
    kind: str
    payload: dict[str, Any]


def default_media_base(base_url: str | None) -> str:
    """The origin of the provider's configured base URL (the simulator's, in a sandbox)."""
    if not base_url:
        return SANDBOX_SIMULATOR
    url = httpx.URL(base_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _update(payload: Payload, task_id: str) -> Update:
    """The provider's body read by the provider's own adapter, as the real one would be."""
    adapter = get_provider(payload.provider)
    if payload.kind is Kind.CALLBACK:
        return adapter.parse_callback(payload.body)
    if payload.kind is Kind.STATUS:
        return adapter.parse_status(payload.body, task_id)
    created = adapter.parse_created(payload.body)
    if created.update is None:
        raise UnparseablePayload("the create answer holds no result")
    return created.update


@post(
    "/jobs/{job_id:str}/trigger",
    guards=[admin_guard],
    status_code=200,
    responses={404: ResponseSpec(ErrorBody, description="No such job")},
)
async def trigger(
    request: Request[Any, Any, Any], job_id: FromPath[str], data: JSONBody[TriggerRequest]
) -> TriggerResult:
    """Record one realistic provider statement for a job, as if its provider had sent it."""
    runtime: Runtime = request.app.state.runtime
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise NotFoundException("no such job")
    if data.provider is not None and data.provider != job.provider:
        raise ValidationException(f"job {job.id} is a {job.provider} job, not {data.provider}")
    phase = PHASES.get(data.status)
    if phase is None:
        raise ValidationException(f"status must be one of {', '.join(PHASES)}")
    if data.progress is not None and not 0 <= data.progress <= 1:
        raise ValidationException("progress is a fraction from 0 to 1")
    base = default_media_base(runtime.settings.provider(job.provider).base_url)
    name = uuid.uuid4().hex
    result_url = data.result_url or f"{base}/_sim/media/{name}.mp4"
    preview = _PREVIEWS.get(job.provider)
    preview_url = data.preview_url or (f"{base}/_sim/media/{name}.{preview}" if preview else None)
    task_id = job.task_id or job.id
    if job.provider == "runway_ai" and phase is not PHASES["succeeded"]:
        # A synchronous provider has only its create call: a refusal is a failed job.
        payload = Payload(provider=job.provider, kind=Kind.CREATED, body={"error": "simulated"})
        update = Update(status=Status.FAILED, raw_status="create_failed", error="simulated")
    else:
        if job.provider not in PROVIDERS:
            # A generic (Standard Webhooks) provider has no documented shape to imitate.
            raise ValidationException(f"the sandbox does not simulate {job.provider}")
        payload = payload_for(
            job.provider,
            phase,
            task_id=task_id,
            progress=None if data.progress is None else round(data.progress * 100),
            result_url=result_url,
            preview_url=preview_url,
            wrapped=data.wrapped,
        )
        try:
            update = _update(payload, task_id)
        except (UnparseablePayload, ProviderError) as exc:
            raise ValidationException(f"the adapter refused the body: {exc}") from None
    body = msgspec.json.encode(payload.body)
    raw = RawRequest(
        id=new_id("req"),
        received_at=now(),
        provider=job.provider,
        method="POST",
        path=request.url.path,
        query="",
        headers=redact_headers({k.lower(): v for k, v in request.headers.items()}),
        body=body,
        client=client_address(request.scope, runtime.trusted_proxies),
    )
    recorded = await runtime.ingest.record(
        Write(update=update, source="trigger", raw=raw, job_id=job.id)
    )
    return TriggerResult(
        job_id=job.id,
        event_id=recorded.event.id,
        disposition=recorded.event.disposition.value,
        status=recorded.job.status,
        handlers=[delivery.handler for delivery in recorded.deliveries],
        provider=job.provider,
        kind=payload.kind.value,
        payload=payload.body,
    )


SANDBOX_ROUTES = [trigger]
document_errors(SANDBOX_ROUTES)
