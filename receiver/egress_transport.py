"""The httpx client of `Egress`: httpcore's network backend, resolving and checking first.

httpcore asks its network backend to connect to the URL's host; ours resolves it with
`Egress.vet` and connects to the checked address itself, never the name, so nothing
resolves it a second time. TLS is started on that connection by httpcore with the URL's
name as SNI and for certificate checks, and the request keeps its Host header.
Imported when the first fetch is made: httpx and httpcore stay out of a cold start.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from receiver.egress import FetchRefused

if TYPE_CHECKING:
    from receiver.egress import Egress

__all__ = ["VettingBackend", "vetted_client"]

_SocketOption = Any  # httpcore's SOCKET_OPTION, not exported


class VettingBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `egress.vet` allowed for the host asked for."""

    def __init__(self, egress: Egress):
        self._egress = egress
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                answers = await self._egress.vet(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:  # socket.gaierror among them
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for answer in answers:  # each checked address as a literal: no second lookup
            try:
                return await self._inner.connect_tcp(
                    answer,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("a Unix socket is not a public address")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def vetted_client(egress: Egress, context: ssl.SSLContext, **options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient(**options)` whose connections go through a `VettingBackend`."""
    transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
    # httpx takes no network backend: the pool it made (empty, nothing to close) is
    # replaced by the same pool with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context, network_backend=VettingBackend(egress)
    )
    return httpx.AsyncClient(transport=transport, trust_env=False, **options)
