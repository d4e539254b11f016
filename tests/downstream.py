"""A real HTTP/1.1 server on loopback that records what reaches it and answers from a script.

The built-in handlers' tests use it as the downstream service: a webhook endpoint, a
chat webhook, a file server that can break off mid-body or honour Range requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

__all__ = ["Downstream", "Reply", "Seen", "downstream"]


@dataclasses.dataclass
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Reply:
    """What to answer; `cut_after` closes the connection after that many body bytes."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    cut_after: int | None = None


_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 404: "Not Found", 500: "Error"}


class Downstream:
    """The server: `url`, the requests `seen`, and `respond` choosing each answer."""

    def __init__(self, respond: Callable[[Seen], Reply]):
        self.respond = respond
        self.seen: list[Seen] = []
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            seen = Seen(method=method, path=path, headers=headers, body=body)
            self.seen.append(seen)
            reply = self.respond(seen)
            out = {"content-length": str(len(reply.body)), "connection": "close", **reply.headers}
            if not out["content-length"]:  # "" drops it: the body then ends with the connection
                del out["content-length"]
            reason = _REASONS.get(reply.status, "Status")
            writer.write(f"HTTP/1.1 {reply.status} {reason}\r\n".encode())
            for name, value in out.items():
                writer.write(f"{name}: {value}\r\n".encode())
            writer.write(b"\r\n")
            sent = reply.body if reply.cut_after is None else reply.body[: reply.cut_after]
            writer.write(sent)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def downstream(
    respond: Callable[[Seen], Reply] | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Downstream]:
    """Serve on `host` until the block ends; by default every request gets an empty 200."""
    server_state = Downstream(respond or (lambda seen: Reply()))
    server = await asyncio.start_server(server_state._handle, host, port)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()
