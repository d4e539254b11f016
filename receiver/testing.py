"""Helpers for testing handlers and integrations against a real, running receiver.

`running_receiver` starts the whole receiver (HTTP, dispatcher, poller) on a free
loopback port inside the current event loop, on a SQLite file of your choosing.

`handler_kit` is for your own test suite: it serves a receiver with your handlers on a
temporary SQLite file, makes jobs whose callback URLs it knows, sends each provider's
real callback shape (`build_callback`) through the real verify, store and dispatch path,
runs the deliveries to the end, and tells you which handlers ran, with what event, how
many attempts it took and what they raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import Registry, load_handlers, registry
from receiver.failures import split_error
from receiver.models import DeliveryState, Event, Job, now
from receiver.providers import (
    CallbackStyle,
    Provider,
    ProviderGateway,
    ProviderSettings,
    get_provider,
)
from receiver.runtime import Runtime
from receiver.serving import bind, serve_in_loop
from receiver.simulator.payloads import PHASES, Kind, payload_for
from receiver.store.base import NewJob, Store
from receiver.submit import check_notify_url, queued_job
from receiver.verify import digest, mint_secret, mint_token

__all__ = [
    "TEST_ADMIN_TOKEN",
    "Callback",
    "HandlerKit",
    "KitJob",
    "LiveReceiver",
    "Ran",
    "build_callback",
    "handler_kit",
    "mock_gateway",
    "running_receiver",
]

# The receiver refuses an admin token shorter than 32 characters, in tests too.
TEST_ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789"


@dataclasses.dataclass(kw_only=True)
class LiveReceiver:
    """A receiver serving on loopback: its URL, its parts, and the admin header to use."""

    url: str
    runtime: Runtime
    admin_token: str

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@contextlib.asynccontextmanager
async def running_receiver(
    directory: Path,
    *,
    handlers: Registry | None = None,
    env: Mapping[str, str] | None = None,
    store: Store | None = None,
    admin_token: str = TEST_ADMIN_TOKEN,
) -> AsyncIterator[LiveReceiver]:
    """Serve a receiver whose database lives in `directory`; `env` adds RECEIVER_* settings."""
    sock = bind()
    port = sock.getsockname()[1]
    environ = {
        "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RECEIVER_DATABASE_URL": f"sqlite:///{directory / 'receiver.db'}",
        "RECEIVER_ADMIN_TOKEN": admin_token,
        "RECEIVER_HANDLERS": "",
        **(env or {}),
    }
    try:
        settings = load_settings(environ, config_file=None)
        app = create_app(
            settings, store=store, handlers=handlers if handlers is not None else Registry()
        )
    except BaseException:
        sock.close()
        raise
    async with serve_in_loop(app, sock=sock) as url:
        # Every route loaded, as /healthz would say: the framework's import thread must
        # not compete with the test for the GIL (and stretch its writes) once it begins.
        await app.framework()
        yield LiveReceiver(url=url, runtime=app.state.runtime, admin_token=admin_token)


@contextlib.asynccontextmanager
async def mock_gateway(
    adapter: Provider,
    body: Any,
    *,
    status_code: int = 200,
    base_url: str | None = "https://provider.example.test",
    api_key: str = "test-key",
) -> AsyncIterator[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body` (as JSON).

    Yields the gateway and the list of requests it sent, for asserting on both sides.
    """
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status_code, json=body)

    settings = ProviderSettings(base_url=base_url, api_key=api_key)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        yield ProviderGateway(adapter, settings, client), sent


class Callback(msgspec.Struct, frozen=True, kw_only=True):
    """One provider callback as it goes over the wire: send `body` to `path` with `headers`."""

    provider: str
    method: str
    path: str  # with the query, if any: `/hooks/aivideoapi/<token>?uuid=<task id>`
    headers: dict[str, str]
    body: bytes


def build_callback(
    provider: str,
    status: str,
    *,
    task_id: str,
    token: str,
    secret: str | None = None,
    progress: float | None = None,
    result_url: str | None = None,
    preview_url: str | None = None,
    wrapped: bool = False,
) -> Callback:
    """The callback `provider` sends for `task_id` reaching `status`, in its documented shape.

    apiframe posts its fetch-result body with the job's secret in `x-webhook-secret`;
    rixapi posts the bare (or `wrapped`) feed `data`; aivideoapi sends a bodiless GET
    `?uuid=`. artvisum and runway_ai never call back: ValueError (use `HandlerKit.trigger`).
    """
    adapter = get_provider(provider)
    phase = PHASES.get(status)
    if phase is None:
        raise ValueError(f"status must be one of {', '.join(PHASES)}")
    path = f"/hooks/{provider}/{token}"
    if adapter.callback_style is CallbackStyle.NUDGE:
        return Callback(
            provider=provider, method="GET", path=f"{path}?uuid={task_id}", headers={}, body=b""
        )
    if adapter.callback_style not in (CallbackStyle.SECRET_POST, CallbackStyle.POST):
        raise ValueError(
            f"{provider} never calls back; its news comes from polls or the create call"
        )
    payload = payload_for(
        provider,
        phase,
        task_id=task_id,
        progress=None if progress is None else round(progress * 100),
        result_url=result_url or f"https://cdn.example.test/{task_id}.mp4",
        preview_url=preview_url,
        wrapped=wrapped,
    )
    assert payload.kind is Kind.CALLBACK
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["x-webhook-secret"] = secret
    return Callback(
        provider=provider,
        method="POST",
        path=path,
        headers=headers,
        body=msgspec.json.encode(payload.body),
    )


class KitJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job made by the kit, with the credentials its callbacks need (shown only to tests)."""

    id: str
    provider: str
    task_id: str
    token: str
    secret: str | None
    metadata: dict[str, Any]


class Ran(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery of one event to one handler, as it stands: done, dead, or still pending."""

    handler: str
    event: Event
    state: DeliveryState
    attempts: int
    error: str | None  # the exception, `Type: message`, of its last failed attempt
    delivery_id: str
    traceback: str | None = None  # where in the handler's code it was raised

    @property
    def done(self) -> bool:
        return self.state is DeliveryState.DONE


@dataclasses.dataclass(kw_only=True)
class HandlerKit:
    """A receiver serving your handlers, and the means to feed it and see what they did."""

    receiver: LiveReceiver
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        return self.receiver.runtime

    async def job(
        self,
        provider: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        notify_url: str | None = None,
    ) -> KitJob:
        """A job as `receiver submit` would leave it, without calling the provider."""
        adapter = get_provider(provider)
        token = mint_token()
        secret = mint_secret() if adapter.callback_style is CallbackStyle.SECRET_POST else None
        task_id = task_id or uuid.uuid4().hex
        job = queued_job(
            provider, task_id, metadata, check_notify_url(notify_url) if notify_url else None
        )
        await self.runtime.store.create_job(
            NewJob(
                job=job,
                token_hash=digest(token),
                secret_hash=digest(secret) if secret else None,
            )
        )
        return KitJob(
            id=job.id,
            provider=provider,
            task_id=task_id,
            token=token,
            secret=secret,
            metadata=dict(job.metadata),
        )

    async def send(self, callback: Callback) -> httpx.Response:
        """Send a callback (yours, or from `build_callback`) to the receiver over HTTP."""
        return await self.client.request(
            callback.method,
            self.receiver.url + callback.path,
            content=callback.body or None,
            headers=callback.headers,
        )

    async def callback(self, job: KitJob, status: str, **options: Any) -> httpx.Response:
        """The provider's callback for `job` reaching `status`, through the hook URL.

        Providers whose callback carries no data (aivideoapi's nudge) or who never call
        back (artvisum, runway_ai) get the same statement through `trigger` instead.
        """
        style = get_provider(job.provider).callback_style
        if style not in (CallbackStyle.SECRET_POST, CallbackStyle.POST):
            return await self.trigger(job, status, **options)
        return await self.send(
            build_callback(
                job.provider,
                status,
                task_id=job.task_id,
                token=job.token,
                secret=job.secret,
                **options,
            )
        )

    async def trigger(self, job: KitJob | str, status: str, **options: Any) -> httpx.Response:
        """`POST /jobs/{id}/trigger`: the statement recorded as `receiver trigger` records it."""
        job_id = job if isinstance(job, str) else job.id
        return await self.client.post(
            f"{self.receiver.url}/jobs/{job_id}/trigger",
            json={"status": status, **options},
            headers=self.receiver.admin_headers,
        )

    async def settle(self, *, timeout: float = 10.0) -> list[Ran]:
        """Run deliveries, retries included, until none is pending; return them all."""
        store = self.runtime.store
        dispatcher = self.runtime.dispatcher
        deadline = now() + timeout
        while True:
            await dispatcher.drain(timeout=max(0.1, deadline - now()))
            waiting = [
                delivery
                for state in (DeliveryState.PENDING, DeliveryState.RUNNING)
                for delivery in await store.list_deliveries(state=state)
            ]
            if not waiting:
                return await self.runs()
            if now() >= deadline:
                raise TimeoutError(f"{len(waiting)} deliveries still pending after {timeout}s")
            due = min(delivery.next_attempt_at for delivery in waiting)
            await asyncio.sleep(min(0.25, max(0.005, due - now())))

    async def runs(self, job: KitJob | str | None = None) -> list[Ran]:
        """Every delivery so far (of one job, if named), oldest first, with its event."""
        store = self.runtime.store
        job_id = job if isinstance(job, str) or job is None else job.id
        deliveries = await store.list_deliveries(job_id=job_id)
        events: dict[str, Event] = {}
        for job_of in dict.fromkeys(d.job_id for d in deliveries):
            events.update({event.id: event for event in await store.list_events(job_of)})
        return [
            Ran(
                handler=d.handler,
                event=events[d.event_id],
                state=d.state,
                attempts=d.attempts,
                error=split_error(d.last_error)[0],
                delivery_id=d.id,
                traceback=split_error(d.last_error)[1] or None,
            )
            for d in deliveries
        ]

    async def get(self, job: KitJob | str) -> Job:
        """The job as the receiver holds it now."""
        found = await self.runtime.store.get_job(job if isinstance(job, str) else job.id)
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def handler_kit(
    directory: Path,
    handlers: Registry | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[HandlerKit]:
    """Serve `handlers` (a Registry, a module name to import, or None for every `@on`).

    The database is `directory/receiver.db`. Retries are fast (10 ms, doubling, capped at
    0.2 s) and a delivery is dead after 3 attempts; `env` (`RECEIVER_*`) overrides these
    and switches on built-in handlers. Deliveries run only in `settle`, so a test sees
    one step at a time.
    """
    if isinstance(handlers, str):
        chosen = load_handlers(handlers)
    else:
        chosen = registry if handlers is None else handlers
    settings_env = {
        "RECEIVER_RETRY_BASE_DELAY": "0.01",
        "RECEIVER_RETRY_MAX_DELAY": "0.2",
        "RECEIVER_HANDLER_MAX_ATTEMPTS": "3",
        **(env or {}),
    }
    sock = bind()
    port = sock.getsockname()[1]
    environ = {
        "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RECEIVER_DATABASE_URL": f"sqlite:///{directory / 'receiver.db'}",
        "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RECEIVER_HANDLERS": "",
        **settings_env,
    }
    try:
        settings = load_settings(environ, config_file=None)
        app = create_app(settings, handlers=chosen, run_loops=False)
    except BaseException:
        sock.close()
        raise
    async with (
        serve_in_loop(app, sock=sock) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        live = LiveReceiver(url=url, runtime=app.state.runtime, admin_token=TEST_ADMIN_TOKEN)
        yield HandlerKit(receiver=live, client=client)
