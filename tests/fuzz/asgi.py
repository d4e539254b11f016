"""Calling the real ASGI app in-process with raw scopes, so every byte the app sees is chosen.

httpx would normalise what we want to send broken (percent-encoding, header values); a
server such as uvicorn passes these through to the app as bytes, so this is what it sees.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec

__all__ = ["Answer", "Snapshot", "call", "snapshot"]


class Answer(msgspec.Struct):
    """The app's answer as sent: status, raw headers and the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] = (),
    timeout: float = 10.0,
) -> Answer:
    """One request through the app; the body arrives in `chunks`. Fails if it takes > timeout."""
    raw_path = quote(path.encode("utf-8", "surrogatepass"), safe="/").encode("ascii")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("203.0.113.7", 40000),
        "server": ("testserver", 80),
        "state": {},
    }
    pending = list(chunks) or [b""]
    done = asyncio.Event()
    started: dict[str, Any] = {}
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout)
    except TimeoutError:
        raise AssertionError(f"{method} {path!r} took more than {timeout} s: a hang") from None
    assert started, "the app finished without answering"
    return Answer(started["status"], list(started.get("headers", [])), b"".join(body))


class Snapshot(msgspec.Struct, frozen=True):
    """What a request may change in the store, summed so one query reads it."""

    jobs: tuple[Any, ...]
    events: int
    deliveries: int
    requests: int
    quarantine: int


def snapshot(db: sqlite3.Connection) -> Snapshot:
    jobs = db.execute(
        "SELECT count(*), total(updated_at), total(next_poll_at), total(poll_attempts),"
        " group_concat(status || ':' || coalesce(progress, '') || ':' || coalesce(task_id, ''))"
        " FROM jobs"
    ).fetchone()
    counts = [
        db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("events", "deliveries", "requests", "quarantine")
    ]
    return Snapshot(tuple(jobs), *counts)
