"""Regressions for the bugs the fuzzers found, each replayed against a real app and store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi import call
from test_fuzz_hooks import TASK_IDS, TOKENS, Rig
from test_fuzz_hooks import rig as rig  # the fixture

from receiver.models import Status
from receiver.serving import serve_in_loop
from receiver.testing import running_receiver


def _quarantine(db: sqlite3.Connection) -> list[tuple[str, int]]:
    return db.execute("SELECT reason, status_code FROM quarantine ORDER BY rowid").fetchall()


class TestNonUtf8Query:
    """A query string that is not UTF-8 is kept with its rejection, and does not stop a callback.

    Building `request.url` decodes the raw query as UTF-8; the hooks used it to record the
    request, so the rejection itself failed (an unkept 400) and so did a valid callback.
    Servers such as uvicorn with httptools pass such bytes through.
    """

    async def test_rejected_nudge_is_quarantined(self, rig: Rig) -> None:
        answer = await call(rig.app, "GET", "/hooks/aivideoapi/wrong-token", query=b"uuid=\xff")
        assert 404 == answer.status
        assert [("unknown_token", 404)] == _quarantine(rig.db)

    async def test_valid_callback_is_recorded(self, rig: Rig) -> None:
        body = b'{"status": "1", "task_id": "%s"}' % TASK_IDS["rixapi"].encode()
        answer = await call(
            rig.app, "POST", f"/hooks/rixapi/{TOKENS['rixapi']}", query=b"x=\xff", chunks=[body]
        )
        assert 200 == answer.status
        assert [] == _quarantine(rig.db)
        job = await rig.runtime.store.get_job(rig.jobs["rixapi"].id)
        assert Status.RUNNING == job.status


class TestOversizedNudgeBody:
    """A nudge sent with a body over the limit is refused by the hook (413, kept), like a POST.

    The GET route kept Litestar's own body limit, which answered before the hook could
    quarantine anything, when the body came without a Content-Length.
    """

    async def test_streamed_body_over_the_limit(self, rig: Rig) -> None:
        chunks = [b"x" * 1024] * 8  # 8 KiB against a 4 KiB limit, no Content-Length
        answer = await call(
            rig.app, "GET", f"/hooks/aivideoapi/{TOKENS['aivideoapi']}", chunks=chunks
        )
        assert 413 == answer.status
        assert [("too_large", 413)] == _quarantine(rig.db)


@pytest.fixture
async def provider_answering(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A real HTTP server standing in for a provider: every request gets `request.param`."""
    body: bytes = request.param

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async with serve_in_loop(app) as url:
        yield url


async def _submit(directory: Path, provider_url: str) -> httpx.Response:
    """POST /jobs for a runway_ai job on a receiver whose runway_ai is `provider_url`."""
    env = {"RECEIVER_RUNWAY_AI_BASE_URL": provider_url, "RECEIVER_RUNWAY_AI_API_KEY": "k"}
    async with (
        running_receiver(directory, env=env) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        return await http.post(
            "/jobs",
            json={"provider": "runway_ai", "input": {"prompt": "p"}},
            headers=live.admin_headers,
        )


class TestUnstorableProviderAnswer:
    """A provider answer the store could not keep is an unreadable answer, not a 500.

    The gateway decoded answers with the standard library alone, which accepts lone
    surrogates (`"\\ud800"`): the URL then reached SQLite, which cannot encode it, and
    `POST /jobs` answered 500. NaN stays tolerated (as null): the job is not lost for it.
    """

    @pytest.mark.parametrize(
        "provider_answering",
        [
            b'{"video_url": "https://cdn.example/\\ud800.mp4"}',
            b'{"video_url": "https://cdn.example/a.mp4", "x": '
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}",
        ],
        indirect=True,
        ids=["lone-surrogate", "deep"],
    )
    async def test_unstorable_answer(self, tmp_path: Path, provider_answering: str) -> None:
        answer = await _submit(tmp_path, provider_answering)
        assert 201 == answer.status_code, answer.text
        assert "failed" == answer.json()["status"], answer.json()

    @pytest.mark.parametrize(
        "provider_answering",
        [b'{"video_url": "https://cdn.example/a.mp4", "duration": NaN}'],
        indirect=True,
    )
    async def test_nan_is_read_as_null(self, tmp_path: Path, provider_answering: str) -> None:
        answer = await _submit(tmp_path, provider_answering)
        assert 201 == answer.status_code, answer.text
        assert ("succeeded", "https://cdn.example/a.mp4") == (
            answer.json()["status"],
            answer.json()["result_url"],
        )
