"""Faults of the providers' status APIs: errors, Retry-After, slowness, and a call count.

Wrapped around the whole simulator as ASGI middleware, so every provider's status
route (apiframe /fetch, rixapi /runway/feed, aivideoapi /status, artvisum /status/{uuid})
misbehaves the same way when `SimConfig.status_error` or `status_delay` is set.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from receiver.simulator.config import SimConfig

__all__ = ["STATUS_ROUTE", "StatusFaults"]

STATUS_ROUTE = re.compile(
    r"^/(?P<provider>apiframe)/fetch(?:-many)?$"
    r"|^/(?P<rix>rixapi)/runway/feed$"
    r"|^/(?P<aiv>aivideoapi)/status$"
    r"|^/(?P<art>artvisum)/status/[^/]+$"
)


class StatusFaults:
    """ASGI middleware: counts status calls per provider and injects the configured faults."""

    def __init__(self, app: ASGIApp, config: SimConfig, calls: Counter[str], peak: Counter[str]):
        self.app = app
        self.config = config
        self.calls = calls
        self.peak = peak  # the most status calls of one provider in flight at once
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = STATUS_ROUTE.match(scope["path"]) if scope["type"] == ScopeType.HTTP else None
        if match is None:
            await self.app(scope, receive, send)
            return
        provider = next(name for name in match.groupdict().values() if name)
        self.calls[provider] += 1
        self.in_flight[provider] += 1
        self.peak[provider] = max(self.peak[provider], self.in_flight[provider])
        try:
            await self._answer(scope, receive, send)
        finally:
            self.in_flight[provider] -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config.status_delay:
            await asyncio.sleep(self.config.status_delay)
        if self.config.status_error is None:
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if self.config.status_retry_after is not None:
            headers.append((b"retry-after", str(self.config.status_retry_after).encode()))
        body = b'{"message": "simulated fault"}'
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self.config.status_error,
            "headers": headers,
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)
