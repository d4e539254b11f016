"""A smaller sample of the hook fuzzing over a real socket, through uvicorn's HTTP parser.

What the HTTP server refuses itself (broken header bytes, conflicting Content-Length and
Transfer-Encoding) never reaches the app; what it passes on must meet the same
properties as in-process: no 5xx, an answer in bounded time, nothing changed or fired
without credentials, and every 4xx of the app kept in the quarantine.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi import Snapshot, snapshot
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from payloads import TASK, bodies, query_strings
from tally import answered, count, examples
from test_fuzz_hooks import MAX_BODY, SECRETS, STATIC, TASK_IDS, TOKENS

from receiver.dispatch import Registry
from receiver.models import Job, Status, new_id, now
from receiver.providers import PROVIDERS
from receiver.store import NewJob
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import digest

CASES = examples(200)
TARGET = "socket: all hook routes"


class Live:
    """A receiver serving on loopback, a read-only view of its file, and the handler calls."""

    def __init__(
        self,
        receiver: LiveReceiver,
        db: sqlite3.Connection,
        handled: list[str],
        http: httpx.AsyncClient,
    ):
        self.http = http
        self.receiver = receiver
        self.db = db
        self.handled = handled


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    env = {
        "RECEIVER_MAX_BODY_BYTES": str(MAX_BODY),
        # Failed authentication is not rate limited here, so every case reaches the hooks.
        "RECEIVER_AUTH_FAILURE_BURST": "1000000000",
        **{f"RECEIVER_{name.upper()}_WEBHOOK_SECRET": value for name, value in STATIC.items()},
    }
    registry = Registry()
    handled: list[str] = []

    @registry.on("*")
    async def record(event: Any, job: Any) -> None:
        handled.append(job.id)

    async with running_receiver(tmp_path, handlers=registry, env=env) as receiver:
        for name in PROVIDERS:
            at = now()
            job = Job(
                id=new_id("job"),
                provider=name,
                task_id=TASK_IDS[name],
                status=Status.QUEUED,
                created_at=at,
                updated_at=at,
            )
            await receiver.runtime.store.create_job(
                NewJob(job=job, token_hash=digest(TOKENS[name]), secret_hash=digest(SECRETS[name]))
            )
        db = sqlite3.connect(f"file:{tmp_path / 'receiver.db'}?mode=ro", uri=True)
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                yield Live(receiver, db, handled, http)
            await receiver.runtime.dispatcher.drain(timeout=30)
            assert snapshot(db).deliveries == len(handled)
        finally:
            db.close()


def _unpolled(state: Snapshot) -> tuple[Any, ...]:
    """The snapshot without the poll schedule, which the running poller moves by itself."""
    count_, updated, _next_poll, _attempts, statuses = state.jobs
    return (count_, updated, statuses, state.events, state.deliveries, state.requests)


HEADER_VALUE = st.binary(max_size=60).filter(
    lambda raw: not any(c in raw for c in b"\r\n\x00") and raw.strip() == raw
)


class TestSocketFuzz:
    """Over a real socket, the hook routes hold the in-process properties."""

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(
        route=st.sampled_from(["callback", "nudge", "static"]),
        provider=st.sampled_from(sorted(PROVIDERS)),
        own_token=st.booleans(),
        secret=st.one_of(
            st.none(),
            st.sampled_from(["job", "static"]),
            HEADER_VALUE,
        ),
        repeat=st.one_of(st.none(), HEADER_VALUE),
        query=query_strings(),
        body=bodies(MAX_BODY),
    )
    async def test_hook_routes(
        self,
        live: Live,
        route: str,
        provider: str,
        own_token: bool,
        secret: str | bytes | None,
        repeat: bytes | None,
        query: bytes,
        body: bytes,
    ) -> None:
        with count(TARGET):
            offered: list[bytes] = []
            if secret == "job":
                offered.append(SECRETS[provider].encode())
            elif secret == "static":
                offered.append(STATIC.get(provider, "none").encode())
            elif isinstance(secret, bytes):
                offered.append(secret)
            if repeat is not None:
                offered.append(repeat)
            headers = [(b"x-webhook-secret", value) for value in offered]
            token = TOKENS[provider] if own_token else "not-a-token"
            body = body.replace(TASK.encode(), TASK_IDS[provider].encode())
            if route == "static":
                method, path = "POST", f"/hooks/{provider}"
                proven = provider in STATIC and STATIC[provider].encode() in offered
            elif route == "nudge":
                method, path = "GET", f"/hooks/{provider}/{token}"
                proven = own_token
            else:
                method, path = "POST", f"/hooks/{provider}/{token}"
                needs_secret = provider == "apiframe"
                valid = {SECRETS[provider].encode(), STATIC.get(provider, "-").encode()}
                proven = own_token and (not needs_secret or bool(valid & set(offered)))
            try:
                url = httpx.URL(live.receiver.url + path, query=query)
            except (httpx.InvalidURL, UnicodeDecodeError):
                assume(False)
            before = snapshot(live.db)
            try:
                answer = await asyncio.wait_for(
                    live.http.request(method, url, headers=headers, content=body), 15
                )
            except httpx.LocalProtocolError:
                assume(False)  # the client would not send it; nothing reached the server
            answered(TARGET, answer.status_code)
            after = snapshot(live.db)
            assert answer.status_code < 500, answer.text
            from_app = answer.headers.get("content-type", "").startswith("application/json")
            if not proven:
                assert answer.status_code >= 400
                assert _unpolled(before) == _unpolled(after)
            if answer.status_code >= 400 and from_app:
                assert before.quarantine + 1 == after.quarantine


def _raw_request(path: str, head: bytes, body: bytes) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body


SMUGGLING = {
    "cl-and-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "two-cl": b"Content-Length: 2\r\nContent-Length: 40\r\n",
    "cl-list": b"Content-Length: 2, 40\r\n",
    "te-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    "te-obfuscated": b"Transfer-Encoding: xchunked\r\n",
    "negative-cl": b"Content-Length: -1\r\n",
    "huge-cl": b"Content-Length: 99999999999999999999999\r\n",
}


class TestConflictingFraming:
    """Conflicting body framing is refused or read one way, never a 5xx, a hang or an action."""

    @pytest.mark.parametrize("head", list(SMUGGLING.values()), ids=list(SMUGGLING))
    @pytest.mark.parametrize("own_token", [True, False], ids=["own-token", "wrong-token"])
    async def test_framing(self, live: Live, head: bytes, own_token: bool) -> None:
        token = TOKENS["apiframe"] if own_token else "not-a-token"
        body = (
            b'0\r\n\r\n{"status": "finished", "task_id": "' + TASK_IDS["apiframe"].encode() + b'"}'
        )
        before = snapshot(live.db)
        host, port = live.receiver.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(_raw_request(f"/hooks/apiframe/{token}", head, body))
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
        after = snapshot(live.db)
        # No secret header was sent: whatever the framing, nothing may change.
        assert _unpolled(before) == _unpolled(after)
        if status_line:  # the server may also just close the connection
            code = int(status_line.split()[1])
            assert 400 <= code < 500, status_line
