"""Admin and job routes (Bearer admin token), and the open health check."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from receiver.errors import ConfigError, UnknownProvider
from receiver.models import Delivery, Event, Job, Status
from receiver.runtime import Runtime
from receiver.verify import digest

__all__ = ["ADMIN_ROUTES", "OPEN_ROUTES", "JobList", "SubmitRequest", "admin_guard"]


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Only `Authorization: Bearer <RECEIVER_ADMIN_TOKEN>` passes, compared in constant time."""
    runtime: Runtime = connection.app.state.runtime
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    offered = digest(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
    if not hmac.compare_digest(offered, runtime.admin_token_digest):
        raise NotAuthorizedException("admin token required")


class SubmitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /jobs`: submit `input` to `provider`, or track a `task_id` submitted elsewhere."""

    provider: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    task_id: str | None = None


class JobList(msgspec.Struct, kw_only=True):
    items: list[Job]
    next: str | None


class EventList(msgspec.Struct, kw_only=True):
    items: list[Event]


class DeliveryList(msgspec.Struct, kw_only=True):
    items: list[Delivery]


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@post("/jobs", guards=[admin_guard], status_code=201)
async def create_job(request: Request[Any, Any, Any], data: JSONBody[SubmitRequest]) -> Job:
    """Submit a job to a provider (or track one), answering with the job."""
    runtime = _runtime(request)
    try:
        if data.task_id is not None:
            return await runtime.submitter.track(
                data.provider, data.task_id, metadata=data.metadata
            )
        submitted = await runtime.submitter.submit(
            data.provider, data.input, metadata=data.metadata
        )
    except UnknownProvider:
        raise ValidationException(f"unknown provider {data.provider!r}") from None
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    return submitted.job


@get("/jobs", guards=[admin_guard])
async def list_jobs(
    request: Request[Any, Any, Any],
    status: FromQuery[Status | None] = None,
    provider: FromQuery[str | None] = None,
    task_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    next_: Annotated[str | None, QueryParameter(name="next")] = None,
) -> JobList:
    """Jobs, newest first; `next` is the cursor for the following page."""
    page = await _runtime(request).store.list_jobs(
        status=status.value if status else None,
        provider=provider,
        task_id=task_id,
        limit=limit,
        before=next_,
    )
    return JobList(items=page.items, next=page.next)


async def _job_or_404(runtime: Runtime, job_id: str) -> Job:
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise NotFoundException("no such job")
    return job


@get("/jobs/{job_id:str}", guards=[admin_guard])
async def get_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Job:
    return await _job_or_404(_runtime(request), job_id)


@get("/jobs/{job_id:str}/events", guards=[admin_guard])
async def get_job_events(request: Request[Any, Any, Any], job_id: FromPath[str]) -> EventList:
    """Every event of a job, oldest first, whatever its disposition."""
    runtime = _runtime(request)
    await _job_or_404(runtime, job_id)
    return EventList(items=await runtime.store.list_events(job_id))


@get("/jobs/{job_id:str}/deliveries", guards=[admin_guard])
async def get_job_deliveries(
    request: Request[Any, Any, Any], job_id: FromPath[str]
) -> DeliveryList:
    """Every handler delivery of a job, with attempts and the last error."""
    runtime = _runtime(request)
    await _job_or_404(runtime, job_id)
    return DeliveryList(items=await runtime.store.list_deliveries(job_id=job_id))


@get("/healthz")
async def healthz(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Open: 200 while the store answers; StoreUnavailable becomes 503 with Retry-After."""
    await _runtime(request).store.next_delivery_at()
    return {"status": "ok", "store": "ok"}


ADMIN_ROUTES = [create_job, list_jobs, get_job, get_job_events, get_job_deliveries]
OPEN_ROUTES = [healthz]
