"""Admin and job routes (Bearer admin token), and the open health check."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from receiver.admin_auth import check_bearer
from receiver.costs import BudgetExceeded
from receiver.errors import ConfigError, IdempotencyKeyReused, UnknownProvider
from receiver.models import (
    DeliveryState,
    Job,
    Status,
    new_id,
    now,
)
from receiver.runtime import Runtime
from receiver.store.base import metadata_filter
from receiver.wire import (
    DeliveryList,
    ErrorBody,
    EventList,
    JobList,
    QuarantineList,
    ReplayRequest,
    RequestList,
    SpendList,
    SubmitRequest,
    replay_states,
)

__all__ = ["ADMIN_ROUTES", "OPEN_ROUTES", "admin_guard", "document_errors"]


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Only `Authorization: Bearer <RECEIVER_ADMIN_TOKEN>` passes; guessing is rate limited."""
    runtime: Runtime = connection.app.state.runtime
    check_bearer(connection, [runtime.admin_token_digest], "admin token required")


_NOT_FOUND = {404: ResponseSpec(ErrorBody, description="No such job")}


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


_REPLAYED = {"Idempotent-Replayed": "true"}


@post(
    "/jobs",
    guards=[admin_guard],
    status_code=201,
    responses={
        200: ResponseSpec(Job, description="Idempotency-Key seen before: its job, nothing sent"),
        402: ResponseSpec(ErrorBody, description="The job would pass a spend budget"),
        409: ResponseSpec(ErrorBody, description="Idempotency-Key used with another request"),
    },
)
async def create_job(
    request: Request[Any, Any, Any],
    data: JSONBody[SubmitRequest],
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[Job]:
    """Submit a job to a provider (or track one), answering with the job.

    With an `Idempotency-Key` header, the same key and request again answers the same
    job with 200 and `Idempotent-Replayed: true`, and nothing is sent to the provider;
    the key with a different request answers 409. 402 names the budget
    (RECEIVER_BUDGET_DAILY, RECEIVER_BUDGETS) the job's estimated cost would pass; no job
    is made and the provider is not called.
    """
    runtime = _runtime(request)
    try:
        if data.task_id is not None:
            submitted = await runtime.submitter.track(
                data.provider,
                data.task_id,
                metadata=data.metadata,
                notify_url=data.notify_url,
                idempotency_key=idempotency_key,
            )
        else:
            submitted = await runtime.submitter.submit(
                data.provider,
                data.input,
                metadata=data.metadata,
                notify_url=data.notify_url,
                idempotency_key=idempotency_key,
            )
    except UnknownProvider:
        raise ValidationException(f"unknown provider {data.provider!r}") from None
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    except IdempotencyKeyReused as exc:
        raise ClientException(detail=str(exc), status_code=409) from None
    except BudgetExceeded as exc:
        extra = {
            "budget": exc.budget.name,
            "limit": exc.budget.limit,
            "spent": exc.spent,
            "estimated_cost": exc.cost,
        }
        raise HTTPException(str(exc), status_code=402, extra=extra) from None
    if submitted.replayed:
        return Response(submitted.job, status_code=200, headers=_REPLAYED)
    return Response(submitted.job, status_code=201)


@get("/jobs", guards=[admin_guard])
async def list_jobs(
    request: Request[Any, Any, Any],
    status: FromQuery[Status | None] = None,
    provider: FromQuery[str | None] = None,
    task_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    next_: Annotated[str | None, QueryParameter(name="next")] = None,
) -> JobList:
    """Jobs, newest first; `next` is the cursor for the following page.

    `metadata.KEY=VALUE` (repeatable) keeps jobs whose metadata has that value.
    """
    try:
        metadata = metadata_filter(
            {
                key.removeprefix("metadata."): value
                for key, value in request.query_params.items()
                if key.startswith("metadata.")
            }
        )
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    page = await _runtime(request).store.list_jobs(
        status=status.value if status else None,
        provider=provider,
        task_id=task_id,
        limit=limit,
        before=next_,
        metadata=metadata or None,
    )
    return JobList(items=page.items, next=page.next)


async def _job_or_404(runtime: Runtime, job_id: str) -> Job:
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise NotFoundException("no such job")
    return job


@get("/jobs/{job_id:str}", guards=[admin_guard], responses=_NOT_FOUND)
async def get_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Job:
    return await _job_or_404(_runtime(request), job_id)


@get("/jobs/{job_id:str}/events", guards=[admin_guard], responses=_NOT_FOUND)
async def get_job_events(request: Request[Any, Any, Any], job_id: FromPath[str]) -> EventList:
    """Every event of a job, oldest first, whatever its disposition."""
    runtime = _runtime(request)
    await _job_or_404(runtime, job_id)
    return EventList(items=await runtime.store.list_events(job_id))


@get("/jobs/{job_id:str}/deliveries", guards=[admin_guard], responses=_NOT_FOUND)
async def get_job_deliveries(
    request: Request[Any, Any, Any], job_id: FromPath[str]
) -> DeliveryList:
    """Every handler delivery of a job, with attempts and the last error."""
    runtime = _runtime(request)
    await _job_or_404(runtime, job_id)
    return DeliveryList(items=await runtime.store.list_deliveries(job_id=job_id))


@get("/jobs/{job_id:str}/requests", guards=[admin_guard], responses=_NOT_FOUND)
async def get_job_requests(request: Request[Any, Any, Any], job_id: FromPath[str]) -> RequestList:
    """The raw requests kept for a job (credentials redacted when they were stored)."""
    runtime = _runtime(request)
    await _job_or_404(runtime, job_id)
    return RequestList(items=await runtime.store.list_requests(job_id))


@get("/costs", guards=[admin_guard])
async def list_costs(
    request: Request[Any, Any, Any],
    since: Annotated[float, QueryParameter(ge=0)] = 0.0,
    by: Annotated[str | None, QueryParameter(max_length=64)] = None,
) -> SpendList:
    """Spend of jobs created since `since` (Unix seconds), by provider and UTC day; `by`
    names a metadata key to split it by as well."""
    if by is not None:
        try:
            metadata_filter({by: ""})  # the same rule as job filters: a plain key
        except ValueError as exc:
            raise ValidationException(str(exc)) from None
    return SpendList(items=await _runtime(request).store.spend(since=since, by=by))


@get("/deliveries", guards=[admin_guard])
async def list_deliveries(
    request: Request[Any, Any, Any],
    state_: Annotated[DeliveryState | None, QueryParameter(name="state")] = None,
    job_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=10000)] = 1000,
) -> DeliveryList:
    """Deliveries, oldest first; `state=dead` lists the dead letters."""
    store = _runtime(request).store
    items = await store.list_deliveries(job_id=job_id, state=state_, limit=limit)
    return DeliveryList(items=items)


async def _replay(runtime: Runtime, **filters: Any) -> DeliveryList:
    replayed = await runtime.store.replay_deliveries(**filters, at=now())
    if replayed:
        runtime.dispatcher.wake()
    return DeliveryList(items=replayed)


@post(
    "/deliveries/{delivery_id:str}/replay",
    guards=[admin_guard],
    status_code=200,
    responses={404: ResponseSpec(ErrorBody, description="No dead or done delivery with that id")},
)
async def replay_delivery(
    request: Request[Any, Any, Any], delivery_id: FromPath[str]
) -> DeliveryList:
    """Run one dead or done delivery again, under the same id (its idempotency key)."""
    states = replay_states(include_done=True)
    answer = await _replay(_runtime(request), delivery_id=delivery_id, states=states)
    if not answer.items:
        raise NotFoundException("no dead or done delivery with that id")
    return answer


@post("/deliveries/replay", guards=[admin_guard], status_code=200)
async def replay_deliveries(
    request: Request[Any, Any, Any], data: JSONBody[ReplayRequest]
) -> DeliveryList:
    """Run matching finished deliveries again; the answer lists the ones now pending."""
    if data.job_id is None and data.handler is None and not data.all_dead:
        raise ValidationException("name a job_id or a handler, or set all_dead")
    if data.all_dead and data.include_done:
        raise ValidationException("all_dead replays dead deliveries only")
    return await _replay(
        _runtime(request),
        job_id=data.job_id,
        handler=data.handler,
        states=replay_states(data.include_done),
    )


@get("/quarantine", guards=[admin_guard])
async def list_quarantine(
    request: Request[Any, Any, Any],
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> QuarantineList:
    """Rejected requests, newest first, with the reason each was refused."""
    return QuarantineList(items=await _runtime(request).store.list_quarantine(limit=limit))


@get("/healthz")
async def healthz(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Open: 200 while the store answers; StoreUnavailable becomes 503 with Retry-After.

    `instance` is random per process start, so `receiver doctor` can tell whether the
    public URL reaches the same receiver as the admin URL.
    """
    await _runtime(request).store.next_delivery_at()
    return {"status": "ok", "store": "ok", "instance": instance_id(request)}


def instance_id(request: Request[Any, Any, Any]) -> str:
    """This app's random instance id, made on first use."""
    state = request.app.state
    if "instance_id" not in state:
        state.instance_id = new_id("ins")
    value: str = state.instance_id
    return value


ADMIN_ROUTES = [
    create_job,
    list_jobs,
    get_job,
    get_job_events,
    get_job_deliveries,
    get_job_requests,
    list_costs,
    list_deliveries,
    replay_delivery,
    replay_deliveries,
    list_quarantine,
]
OPEN_ROUTES = [healthz]


def document_errors(routes: list[Any]) -> None:
    """Every guarded route may answer 401 (the guard) and 400, in the app's error shape.

    Without this the schema lists Litestar's own 400 body, which the app never sends.
    """
    errors = {
        400: ResponseSpec(ErrorBody, description="Invalid input"),
        401: ResponseSpec(ErrorBody, description="No or wrong admin token"),
        429: ResponseSpec(ErrorBody, description="Too many wrong tokens from this address"),
    }
    for route in routes:
        route.responses = {**errors, **(route.responses or {})}


document_errors(ADMIN_ROUTES)
