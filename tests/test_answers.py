"""The request inspector's answer and latency: noted after each answer, written in batches
(receiver.answers), and shown by the job page and `receiver job`, over real HTTP."""

from __future__ import annotations

import asyncio
import html
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from procs import run_cli
from test_hooks import make_job
from test_store import add_job as add_store_job
from test_store import make_raw

from receiver.answers import AnswerLog
from receiver.dispatch import Registry
from receiver.models import RawRequest, now
from receiver.store import SQLiteStore
from receiver.testing import LiveReceiver, running_receiver

SECRET = "answers-secret-" + "s" * 32
FAST = "tok-fast-" + "f" * 32
RIX = "tok-rix-" + "r" * 32
APIFRAME_RUNNING = {"task_id": "task-a", "status": "processing", "percentage": "40"}
RIXAPI_RUNNING = {"task_id": "task-r", "status": "1"}


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'answers.db'}", busy_timeout_ms=50)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def stored_requests(store: SQLiteStore, job_id: str, count: int) -> list[str]:
    """A job with `count` stored requests (nudges); their ids, oldest first."""
    await add_store_job(store, job_id)
    ids = [f"req_{n:03d}" for n in range(count)]
    for request_id in ids:
        await store.record_nudge(job_id, make_raw(request_id), poll_at=now() + 60)
    return ids


async def answers_of(store: SQLiteStore, job_id: str) -> list[tuple[int | None, float | None]]:
    return [(raw.answer_status, raw.answer_ms) for raw in await store.list_requests(job_id)]


class TestAnswerLog:
    """Notes are kept in a bounded buffer and written in one batch, surviving a store fault."""

    async def test_the_oldest_notes_go_when_the_buffer_is_full(
        self, sqlite_store: SQLiteStore
    ) -> None:
        """With room for three, five notes keep the newest three and count two dropped."""
        ids = await stored_requests(sqlite_store, "job_1", 5)
        answers = AnswerLog(sqlite_store, max_pending=3)
        for n, request_id in enumerate(ids):
            answers.note(request_id, 200, float(n))
        assert (3, 2) == (await answers.flush(), answers.dropped)
        expected = [(None, None), (None, None), (200, 2.0), (200, 3.0), (200, 4.0)]
        assert expected == await answers_of(sqlite_store, "job_1")

    async def test_refusals_are_not_noted(self, sqlite_store: SQLiteStore) -> None:
        """A 4xx is kept by the quarantine, never in `requests`: it takes no room here."""
        answers = AnswerLog(sqlite_store)
        for status in (400, 401, 404, 413, 429):
            answers.note("req_x", status, 1.0)
        answers.note(None, 200, 1.0)
        assert 0 == len(answers.pending)

    async def test_a_locked_store_keeps_the_notes_for_the_next_flush(
        self, sqlite_store: SQLiteStore, tmp_path: Path
    ) -> None:
        """While another connection holds the write lock nothing is lost; then all is written."""
        [request_id] = await stored_requests(sqlite_store, "job_1", 1)
        answers = AnswerLog(sqlite_store)
        answers.note(request_id, 202, 1.5)
        blocker = sqlite3.connect(tmp_path / "answers.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert 0 == await answers.flush()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert 1 == len(answers.pending)
        assert 1 == await answers.flush()
        assert [(202, 1.5)] == await answers_of(sqlite_store, "job_1")

    async def test_stop_writes_what_is_left(self, sqlite_store: SQLiteStore) -> None:
        """A note made just before the shutdown is written by `stop`, not lost with the process."""
        [request_id] = await stored_requests(sqlite_store, "job_1", 1)
        answers = AnswerLog(sqlite_store, interval=3600)
        answers.start()
        answers.note(request_id, 200, 4.0)
        await answers.stop()
        assert [(200, 4.0)] == await answers_of(sqlite_store, "job_1")


async def answered(live: LiveReceiver, job_id: str, count: int) -> list[RawRequest]:
    """The job's `count` stored requests once the flush (every second) wrote each answer."""
    found: list[RawRequest] = []
    for _ in range(100):
        found = await live.runtime.store.list_requests(job_id)
        if len(found) == count and all(raw.answer_status is not None for raw in found):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"answers not written: {found}")


def page_answers(text: str) -> list[tuple[str, str]]:
    """(answer, latency) of each row of the job page's requests table."""
    match = re.search(r'<table id="requests">.*?</table>', text, re.S)
    assert match is not None, "no requests table"
    cells = re.findall(
        r'<td data-field="answer"[^>]*>([^<]*)</td><td data-field="latency">([^<]*)</td>',
        match.group(0),
    )
    return [(html.unescape(a), html.unescape(b)) for a, b in cells]


def cli_answers(out: str) -> list[tuple[str, str]]:
    """(answer, latency) of each line under `requests (N)` in `receiver job`'s output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("requests ("))
    rows = []
    for line in lines[start + 2 :]:
        found = re.search(r"\s(\d{3}|-)\s+(\d+\.\d ms|-)$", line)
        assert found is not None, line
        rows.append((found.group(1), found.group(2)))
    return rows


LATENCY = re.compile(r"\d+\.\d ms")


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveReceiver]:
    env = {"RECEIVER_RIXAPI_BASE_URL": "http://127.0.0.1:9"}  # its pulls fail at once
    async with running_receiver(tmp_path, handlers=Registry(), env=env) as receiver:
        yield receiver


class TestInspector:
    """Each stored request shows the status we answered and how long the answer took."""

    async def test_job_page_and_cli_show_status_and_latency(
        self, live: LiveReceiver, tmp_path: Path
    ) -> None:
        """A callback on the fast path (200), one on the framework's route (200) and a nudge
        (202) are shown with their answers, on the job page, by `receiver job` on the
        database and through the admin API."""
        fast = (await make_job(live, task_id="task-a", token=FAST, secret=SECRET)).id
        framed = (await make_job(live, "rixapi", task_id="task-r", token=RIX, secret=None)).id
        async with httpx.AsyncClient(base_url=live.url) as client:
            callback = await client.post(
                f"/hooks/apiframe/{FAST}",
                json=APIFRAME_RUNNING,
                headers={"x-webhook-secret": SECRET},
            )
            rix = await client.post(f"/hooks/rixapi/{RIX}", json=RIXAPI_RUNNING)
            nudge = await client.get(f"/hooks/rixapi/{RIX}?uuid=task-r")
        assert [200, 200, 202] == [callback.status_code, rix.status_code, nudge.status_code]
        [fast_raw] = await answered(live, fast, 1)
        framed_raws = await answered(live, framed, 2)
        assert [200, 200, 202] == [r.answer_status for r in [fast_raw, *framed_raws]]
        for raw in (fast_raw, *framed_raws):
            assert raw.answer_ms is not None and 0 < raw.answer_ms < 10_000

        async with httpx.AsyncClient(base_url=live.url) as browser:
            assert (
                303
                == (await browser.post("/ui/login", data={"token": live.admin_token})).status_code
            )
            fast_page = await browser.get(f"/ui/jobs/{fast}")
            framed_page = await browser.get(f"/ui/jobs/{framed}")
        [(status, latency)] = page_answers(fast_page.text)
        assert "200" == status and LATENCY.fullmatch(latency)
        assert ["200", "202"] == [status for status, _ in page_answers(framed_page.text)]

        by_database = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_HANDLERS": "",
        }
        by_api = {"RECEIVER_URL": live.url, "RECEIVER_ADMIN_TOKEN": live.admin_token}
        for env in (by_database, by_api):
            code, out, err = await run_cli("job", framed, env=env, cwd=tmp_path)
            assert 0 == code, err
            rows = cli_answers(out)
            assert ["200", "202"] == [status for status, _ in rows], out
            assert all(LATENCY.fullmatch(latency) for _, latency in rows), out


class TestStoreDown:
    """A 503 has no stored request, so it shows nowhere; the next answer shows as usual."""

    async def test_a_503_leaves_no_row_and_the_retry_shows_200(self, tmp_path: Path) -> None:
        """While the database is locked the callback gets 503; its retry 200 is the one row."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}", busy_timeout_ms=50)
        async with running_receiver(tmp_path, handlers=Registry(), store=store) as live:
            token = "tok-down-" + "d" * 32
            job_id = (await make_job(live, task_id="task-a", token=token, secret=SECRET)).id
            blocker = sqlite3.connect(tmp_path / "receiver.db", isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:

                async def post() -> int:
                    answer = await client.post(
                        f"/hooks/apiframe/{token}",
                        json=APIFRAME_RUNNING,
                        headers={"x-webhook-secret": SECRET},
                    )
                    return answer.status_code

                refused = await post()
                blocker.execute("ROLLBACK")
                blocker.close()
                statuses = [await post()]
                while statuses[-1] == 503 and len(statuses) < 20:  # a slow fsync, retried
                    await asyncio.sleep(0.1)
                    statuses.append(await post())
            assert (503, 200) == (refused, statuses[-1])
            [raw] = await answered(live, job_id, 1)
            assert 200 == raw.answer_status
