"""Helpers for testing handlers and integrations against a real, running receiver.

`running_receiver` starts the whole receiver (HTTP, dispatcher, poller) on a free
loopback port inside the current event loop, on a SQLite file of your choosing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.providers import Provider, ProviderGateway, ProviderSettings
from receiver.runtime import Runtime
from receiver.serving import bind, serve_in_loop
from receiver.store.base import Store

__all__ = ["LiveReceiver", "mock_gateway", "running_receiver"]


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
    admin_token: str = "test-admin-token",
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
