"""A response's head and body leave in one write to the socket, not two.

uvicorn writes a response's head when the app sends `http.response.start` and its body
when the app sends `http.response.body`: two system calls per answer. On loopback, and
under load, the second write cost as much CPU as verifying the callback's secret, parsing
and routing it together (py-spy on `receiver serve` under wrk). A hook answer sends both
messages in the same turn of the event loop, so holding the head until the body's write,
or until the end of that turn (a streamed response's head is then not held back for its
first chunk), sends the bytes the client would have received, in one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["OneWriteProtocol"]


class _HeadHeldTransport:
    """The transport as one response cycle sees it: the head waits for the next write."""

    __slots__ = ("_head", "_loop", "_transport", "holding")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.holding = False  # the next write is a response's head
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.holding:
            self.holding = False
            self._head = data
            self._loop.call_soon(self.flush)
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():  # aborted meanwhile: nothing to send
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response's head with what follows it.

    The receiver's server runs it (under receiver.connections' limits), and so does the
    benchmark's bare floor: the floor stays the same stack with nothing on top.
    """

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            _write_once(self.cycle, self.loop)


def _write_once(cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop) -> None:
    """Make `cycle` write a response's head together with what follows it."""
    transport = _HeadHeldTransport(cycle.transport, loop)
    send = cycle.send

    async def send_held(message: Any) -> None:
        transport.holding = message["type"] == "http.response.start"
        try:
            await send(message)
        finally:
            transport.holding = False

    cycle.transport = transport  # type: ignore[assignment]
    cycle.send = send_held  # type: ignore[method-assign]
