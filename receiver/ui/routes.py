"""The dashboard's routes under `/ui`: log in once, then pages and a live event stream.

Pages need the session cookie (see `receiver.ui.session`); without it they send the
browser to the login form, and the stream and posts answer 401. Posts must carry the
session's CSRF value. Every answer forbids framing and inline scripts.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from receiver.admin_auth import locked_out_for, record_failure
from receiver.admin_token import admin_token_file
from receiver.errors import StoreUnavailable
from receiver.failures import split_error
from receiver.models import DeliveryState, Job, now
from receiver.runtime import Runtime
from receiver.ui import pages
from receiver.ui.filters import find_jobs, parse_job_query
from receiver.ui.session import (
    COOKIE,
    csrf_token,
    csrf_valid,
    end_session,
    session_alive,
    start_session,
)
from receiver.verify import digest

__all__ = ["UI_ROUTER"]

AnyRequest = Request[Any, Any, Any]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' http: https: data:; media-src 'self' http: https:;"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# How long one event stream lasts before the browser reconnects, and how often it looks.
_STREAM_SECONDS = 20.0
_STREAM_EVERY = 0.5
_DEAD_SHOWN = 500  # dead deliveries on /ui/dead (oldest first); replaying shows the next
_QUARANTINE_SHOWN = 200  # newest refused requests on /ui/quarantine


def _runtime(request: AnyRequest) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _key(request: AnyRequest) -> str:
    return _runtime(request).admin_token_digest


async def _session(request: AnyRequest) -> str | None:
    """The request's session cookie if it names a live session, else None."""
    value = request.cookies.get(COOKIE)
    alive = await session_alive(_runtime(request).store, _key(request), value, at=now())
    return value if alive else None


def _html(body: str, status_code: int = 200) -> Response[str]:
    return Response(body, media_type=MediaType.HTML, status_code=status_code, headers=_HEADERS)


def _replayed(request: AnyRequest) -> str | None:
    """The notice after a replay's redirect (`?replayed=3`), from a number and nothing else."""
    text = request.query_params.get("replayed", "")
    if not text.isdigit() or len(text) > 9:
        return None
    count = int(text)
    if count == 0:
        return "Nothing was replayed: no dead delivery matched."
    if count == 1:
        return "Replayed 1 delivery: pending again, the dispatcher runs it now."
    return f"Replayed {count} deliveries: pending again, the dispatcher runs them now."


def _token_hint(runtime: Runtime) -> str:
    """Where the admin token is: the variable, or the generated file (not its content).

    The file is named, not its directory: the page is open to anyone who reaches it, and
    the server's layout is none of their business; the operator knows where the database is.
    """
    if runtime.settings.admin_token is not None:
        return "The token is RECEIVER_ADMIN_TOKEN in the receiver's environment."
    name = admin_token_file(runtime.settings).name
    return (
        f"The token generated at first start is in the file {name}, beside the database"
        " (readable by its owner only; the receiver logged its full path when it made it)."
    )


def _to_login(request: AnyRequest) -> Redirect:
    """To the login form, which comes back here (filters included) afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect("/ui/login", status_code=303, headers=_HEADERS, query_params={"next": here})


def _next_page(value: str | None) -> str:
    """Where to go after logging in: a dashboard path only, never another site."""
    if value and value.startswith("/ui") and "//" not in value and "\\" not in value:
        return value
    return "/ui"


async def _form(request: AnyRequest) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def _check_post(request: AnyRequest, form: dict[str, str]) -> str:
    """The session of a form post that proves it came from our own page; else 401."""
    session = await _session(request)
    if session is None or not csrf_valid(_key(request), session, form.get("csrf")):
        raise NotAuthorizedException("session or CSRF value missing")
    return session


@get("/login", include_in_schema=False)
async def login_form(
    request: AnyRequest, next_: Annotated[str | None, QueryParameter(name="next")] = None
) -> Response[str]:
    hint = _token_hint(_runtime(request))
    return _html(pages.login_page(failed=False, next_page=_next_page(next_), token_hint=hint))


@post("/login", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Response[Any]:
    """Trade the admin token for a session cookie (the token itself is not kept)."""
    form = await _form(request)
    offered = form.get("token", "").strip()
    next_page = _next_page(form.get("next"))
    runtime = _runtime(request)
    # Guessing is limited per client address, in the same bucket as wrong Bearer tokens.
    if (wait := locked_out_for(request)) is not None:
        return Response(
            "too many attempts; try again later",
            media_type=MediaType.TEXT,
            status_code=429,
            headers={**_HEADERS, "Retry-After": str(wait)},
        )
    if not offered or not hmac.compare_digest(digest(offered), _key(request)):
        record_failure(request)
        hint = _token_hint(runtime)
        page = pages.login_page(failed=True, next_page=next_page, token_hint=hint)
        return _html(page, status_code=401)
    ttl = runtime.settings.session_ttl
    session = await start_session(runtime.store, _key(request), at=now(), ttl=ttl)
    cookie = Cookie(
        key=COOKIE,
        value=session,
        path="/ui",
        max_age=max(1, int(ttl)),
        httponly=True,
        samesite="strict",
        secure=runtime.settings.public_url.startswith("https://"),
    )
    return Redirect(next_page, status_code=303, cookies=[cookie], headers=_HEADERS)


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Response[Any]:
    """End the session everywhere (not only in this browser), then back to the login form."""
    session = await _check_post(request, await _form(request))
    await end_session(_runtime(request).store, _key(request), session)
    response = Redirect("/ui/login", status_code=303, headers=_HEADERS)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@get("/", include_in_schema=False)
async def jobs(request: AnyRequest) -> Response[Any]:
    """The job list, filtered and paged by its query string (see `receiver.ui.filters`)."""
    session = await _session(request)
    if session is None:
        return _to_login(request)
    runtime = _runtime(request)
    query = parse_job_query(dict(request.query_params.dict()), at=now())
    found = await find_jobs(runtime.store, query)
    body = pages.jobs_page(
        found,
        query,
        providers=list(runtime.providers),
        csrf=csrf_token(_key(request), session),
        at=now(),
    )
    return _html(body, status_code=400 if query.problems else 200)


@get("/jobs/{job_id:str}", include_in_schema=False)
async def job(request: AnyRequest, job_id: FromPath[str]) -> Response[Any]:
    session = await _session(request)
    if session is None:
        return _to_login(request)
    store = _runtime(request).store
    csrf = csrf_token(_key(request), session)
    found = await store.get_job(job_id)
    if found is None:
        return _html(pages.not_found_page(f"No job {job_id[:100]}.", csrf=csrf), 404)
    body = pages.job_page(
        found,
        await store.list_events(job_id),
        await store.list_requests(job_id),
        await store.list_deliveries(job_id=job_id),
        csrf=csrf,
        notice=_replayed(request),
    )
    return _html(body)


@get("/dead", include_in_schema=False)
async def dead(request: AnyRequest) -> Response[Any]:
    """Dead deliveries, oldest first, with replay of one or all."""
    session = await _session(request)
    if session is None:
        return _to_login(request)
    found = await _runtime(request).store.list_deliveries(
        state=DeliveryState.DEAD, limit=_DEAD_SHOWN
    )
    csrf = csrf_token(_key(request), session)
    return _html(pages.dead_page(found, csrf=csrf, notice=_replayed(request), limit=_DEAD_SHOWN))


@get("/quarantine", include_in_schema=False)
async def quarantine(request: AnyRequest) -> Response[Any]:
    """The newest refused requests, redacted and capped as they were kept."""
    session = await _session(request)
    if session is None:
        return _to_login(request)
    found = await _runtime(request).store.list_quarantine(limit=_QUARANTINE_SHOWN)
    csrf = csrf_token(_key(request), session)
    return _html(pages.quarantine_page(found, csrf=csrf, limit=_QUARANTINE_SHOWN))


async def _replay(runtime: Runtime, **filters: Any) -> list[Any]:
    replayed = await runtime.store.replay_deliveries(**filters, at=now())
    if replayed:
        runtime.dispatcher.wake()
    return replayed


@post("/deliveries/{delivery_id:str}/replay", include_in_schema=False, status_code=303)
async def replay(request: AnyRequest, delivery_id: FromPath[str]) -> Response[Any]:
    """Run a dead or done delivery again (same id), then back to its job's page (or /ui/dead),
    which says so."""
    form = await _form(request)
    session = await _check_post(request, form)
    runtime = _runtime(request)
    states = frozenset({DeliveryState.DEAD, DeliveryState.DONE})
    replayed = await _replay(runtime, delivery_id=delivery_id, states=states)
    if not replayed:
        csrf = csrf_token(_key(request), session)
        what = "No dead or done delivery with that id: it may be running again already."
        return _html(pages.not_found_page(what, csrf=csrf), 404)
    target = "/ui/dead" if form.get("back") == "dead" else f"/ui/jobs/{replayed[0].job_id}"
    return Redirect(
        target, status_code=303, headers=_HEADERS, query_params={"replayed": str(len(replayed))}
    )


@post("/dead/replay", include_in_schema=False, status_code=303)
async def replay_dead(request: AnyRequest) -> Response[Any]:
    """Run every dead delivery again, then back to /ui/dead, which says how many."""
    await _check_post(request, await _form(request))
    replayed = await _replay(_runtime(request), states=frozenset({DeliveryState.DEAD}))
    return Redirect(
        "/ui/dead", status_code=303, headers=_HEADERS, query_params={"replayed": str(len(replayed))}
    )


def _job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "provider": job.provider,
        "task_id": job.task_id,
        "status": job.status.value,
        "raw_status": job.raw_status,
        "progress": job.progress,
        "error": pages.error_line(job),
        "metadata": pages.metadata_text(job.metadata),
    }


def _delivery_view(delivery: Any) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_error": split_error(delivery.last_error)[0],  # the traceback: on the page
    }


async def _changes(runtime: Runtime, job_id: str | None) -> AsyncIterator[ServerSentEventMessage]:
    """What changed since the last look, as `job` and `delivery` events, for a while."""
    sent: dict[str, bytes] = {}
    yield ServerSentEventMessage(comment="live", retry=1000)
    deadline = time.monotonic() + _STREAM_SECONDS
    while time.monotonic() < deadline:
        items: list[tuple[str, dict[str, Any]]] = []
        try:
            if job_id is None:
                page = await runtime.store.list_jobs(limit=100)
                items = [("job", _job_view(j)) for j in reversed(page.items)]
            else:
                found = await runtime.store.get_job(job_id)
                if found is not None:
                    items.append(("job", _job_view(found)))
                deliveries = await runtime.store.list_deliveries(job_id=job_id)
                items += [("delivery", _delivery_view(d)) for d in deliveries]
        except StoreUnavailable:
            items = []
        for kind, view in items:
            encoded = msgspec.json.encode(view)
            if sent.get(view["id"]) != encoded:
                sent[view["id"]] = encoded
                yield ServerSentEventMessage(event=kind, data=encoded.decode())
        await asyncio.sleep(_STREAM_EVERY)


@get("/stream", include_in_schema=False)
async def stream(request: AnyRequest, job: FromQuery[str | None] = None) -> ServerSentEvent:
    """Server-sent events: every job's (or one job's and its deliveries') changes."""
    if await _session(request) is None:
        raise NotAuthorizedException("log in first")
    return ServerSentEvent(_changes(_runtime(request), job), headers={"Cache-Control": "no-store"})


@get("/static/{name:str}", include_in_schema=False)
async def static(name: FromPath[str]) -> Response[bytes]:
    if name not in _STATIC:
        raise NotFoundException("no such file")
    content = resources.files("receiver.ui").joinpath(f"static/{name}").read_bytes()
    return Response(
        content,
        media_type=_STATIC[name],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


UI_ROUTER = Router(
    path="/ui",
    route_handlers=[
        login_form,
        login,
        logout,
        jobs,
        job,
        dead,
        quarantine,
        replay,
        replay_dead,
        stream,
        static,
    ],
)
