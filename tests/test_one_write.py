"""A response leaves in one write to the socket: its head waits for its body.

uvicorn's real httptools protocol, made by `guarded_protocol` as `receiver serve` makes
it, reads real request bytes; the transport under it records what would reach the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from receiver.connections import ConnectionLimits, guarded_protocol

LIMITS = ConnectionLimits(
    head_timeout=5.0,
    body_timeout=5.0,
    body_min_rate=1000.0,
    max_connections=10,
    max_per_client=10,
    retry_after=1,
)
POST = (
    b"POST /hooks/p HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, one entry per write, in place of a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer_quickly(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    headers = [(b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def _stream(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.05)  # a streamed body's first chunk comes later
    await send({"type": "http.response.body", "body": b"late"})


def _connected(app: Any) -> tuple[Any, RecordingTransport]:
    """`receiver serve`'s protocol for `app`, on a fresh connection to a recording transport."""
    config = Config(app, lifespan="off", log_level="warning")
    protocol = guarded_protocol(LIMITS)(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def _serve(app: Any, request: bytes) -> RecordingTransport:
    protocol, transport = _connected(app)
    protocol.data_received(request)
    for _ in range(100):
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
        await asyncio.sleep(0.01)
    return transport


async def test_a_short_answer_is_one_write_with_head_and_body() -> None:
    transport = await _serve(_answer_quickly, POST)

    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b'{"ok":true}'


async def test_a_streamed_answer_sends_its_head_without_waiting_for_the_body() -> None:
    protocol, transport = _connected(_stream)
    protocol.data_received(POST)
    for _ in range(4):  # a few turns of the loop, well before the body's 50 ms
        await asyncio.sleep(0)

    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"\r\n\r\n")


async def test_a_100_continue_is_not_held_back_for_the_answer() -> None:
    head_only = POST.replace(b"Content-Length: 2", b"Expect: 100-continue\r\nContent-Length: 2")
    head_only = head_only[: -len(b"{}")]
    protocol, transport = _connected(_answer_quickly)
    protocol.data_received(head_only)
    for _ in range(4):
        await asyncio.sleep(0)

    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # the client may now send
    protocol.data_received(b"{}")
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(transport.writes) == 2
    assert transport.writes[1].endswith(b'{"ok":true}')
