"""The ingest routes over real HTTP: what each kind of callback does, and every rejection."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest

from receiver.dispatch import Registry
from receiver.errors import StoreUnavailable
from receiver.hook_handlers import nudge_uuid
from receiver.models import Job, Status, new_id, now
from receiver.store import NewJob, SQLiteStore
from receiver.store.base import Recorded, TokenMatch
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import REDACTED, digest

TOKEN = "tok-" + "a" * 40
SECRET = "s3cret-" + "b" * 40
STATIC_SECRET = "static-" + "c" * 40
T = TypeVar("T")

# The two result shapes of apiframe's document: "40" as a string, 100 as a number.
APIFRAME_PROGRESS = {
    "task_id": "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a",
    "task_type": "runway",
    "status": "processing",
    "percentage": "40",
}
APIFRAME_FINISHED = {
    "task_id": "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a",
    "task_type": "runway",
    "video_url": "https://cdn.example/xxxx.mp4",
    "status": "finished",
    "percentage": 100,
}


class Calls:
    """What the registered handlers were called with, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float | None]] = []
        self.changed = asyncio.Event()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def handlers(calls: Calls) -> Registry:
    registry = Registry()

    @registry.on("*")
    async def record(event: Any, job: Any) -> None:
        calls.events.append((job.id, event.status.value, event.progress))
        calls.changed.set()

    return registry


@pytest.fixture
async def live(tmp_path: Path, handlers: Registry) -> AsyncIterator[LiveReceiver]:
    env = {
        "RECEIVER_APIFRAME_WEBHOOK_SECRET": STATIC_SECRET,
        "RECEIVER_MAX_BODY_BYTES": "4096",
        "RECEIVER_AIVIDEOAPI_BASE_URL": "http://127.0.0.1:9",
    }
    async with running_receiver(tmp_path, handlers=handlers, env=env) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        yield http


async def make_job(
    live: LiveReceiver,
    provider: str = "apiframe",
    *,
    task_id: str | None = "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a",
    token: str = TOKEN,
    secret: str | None = SECRET,
) -> Job:
    at = now()
    job = Job(
        id=new_id("job"),
        provider=provider,
        task_id=task_id,
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(
        NewJob(job=job, token_hash=digest(token), secret_hash=digest(secret) if secret else None)
    )
    return job


async def retried(make: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    """`make()`, again after StoreUnavailable (a store with a tiny busy timeout)."""
    for _ in range(attempts - 1):
        try:
            return await make()
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    return await make()


async def settle(live: LiveReceiver) -> None:
    """Let the dispatcher run everything that is due."""
    await live.runtime.dispatcher.drain(timeout=5)


async def assert_untouched(live: LiveReceiver, job: Job, calls: Calls) -> None:
    await settle(live)
    stored = await live.runtime.store.get_job(job.id)
    assert stored == job
    assert [] == await live.runtime.store.list_events(job.id)
    assert [] == await live.runtime.store.list_deliveries(job_id=job.id)
    assert [] == calls.events


async def quarantine_reasons(live: LiveReceiver) -> list[str]:
    return [entry.reason for entry in await live.runtime.store.list_quarantine()]


class TestApiframeCallbacks:
    """A job's own URL takes apiframe's posts when the secret matches."""

    async def test_progress_then_result_moves_the_job_and_fires_handlers_in_order(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """The documented "40" progress post and 100 result post become running then succeeded."""
        job = await make_job(live)
        headers = {"x-webhook-secret": SECRET}
        first = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=APIFRAME_PROGRESS, headers=headers
        )
        second = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=APIFRAME_FINISHED, headers=headers
        )
        assert (200, 200) == (first.status_code, second.status_code)
        await settle(live)
        stored = await live.runtime.store.get_job(job.id)
        assert stored is not None
        assert (Status.SUCCEEDED, 1.0, "https://cdn.example/xxxx.mp4") == (
            stored.status,
            stored.progress,
            stored.result_url,
        )
        assert [(job.id, "running", 0.4), (job.id, "succeeded", 1.0)] == calls.events

    async def test_the_static_secret_is_accepted_on_a_job_url(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A callback carrying the provider's configured static secret is genuine too."""
        await make_job(live)
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}",
            json=APIFRAME_PROGRESS,
            headers={"x-webhook-secret": STATIC_SECRET},
        )
        assert 200 == answer.status_code

    async def test_duplicate_and_late_posts_are_stored_and_fire_nothing(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A repeated result and a progress post after it answer 2xx, are kept, and fire nothing."""
        job = await make_job(live)
        headers = {"x-webhook-secret": SECRET}
        for body in (APIFRAME_FINISHED, APIFRAME_FINISHED, APIFRAME_PROGRESS):
            answer = await client.post(f"/hooks/apiframe/{TOKEN}", json=body, headers=headers)
            assert 200 == answer.status_code
        await settle(live)
        events = await live.runtime.store.list_events(job.id)
        assert ["applied", "duplicate", "late"] == [e.disposition.value for e in events]
        assert [(job.id, "succeeded", 1.0)] == calls.events
        stored = await live.runtime.store.get_job(job.id)
        assert stored is not None and Status.SUCCEEDED == stored.status

    async def test_raw_request_is_kept_with_the_secret_redacted(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """The stored raw request has the body as sent, and neither the secret nor the token."""
        job = await make_job(live)
        await client.post(
            f"/hooks/apiframe/{TOKEN}",
            json=APIFRAME_PROGRESS,
            headers={"x-webhook-secret": SECRET},
        )
        [raw] = await live.runtime.store.list_requests(job.id)
        assert b'"percentage":"40"' in raw.body
        assert SECRET not in repr(raw.headers)
        assert TOKEN not in raw.path

    async def test_repeated_headers_are_all_kept(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A header sent twice is stored with both values, and a repeated secret stays hidden."""
        job = await make_job(live)
        headers = [("x-webhook-secret", SECRET), ("x-trace", "a"), ("x-trace", "b")]
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}",
            content=msgspec.json.encode(APIFRAME_PROGRESS),
            headers=headers,
        )
        assert 200 == answer.status_code
        [raw] = await live.runtime.store.list_requests(job.id)
        assert ("a, b", "[redacted]") == (raw.headers["x-trace"], raw.headers["x-webhook-secret"])


class TestRejections:
    """Every rejected request gets a bare answer, changes nothing, and is quarantined."""

    async def test_wrong_secret_is_401_without_detail(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A wrong x-webhook-secret is refused, and the quarantine copy hides what was offered."""
        job = await make_job(live)
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=APIFRAME_FINISHED, headers={"x-webhook-secret": "nope"}
        )
        assert (401, {"error": "unauthorized"}) == (answer.status_code, answer.json())
        await assert_untouched(live, job, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert ("wrong_secret", 401) == (entry.reason, entry.status_code)
        assert "nope" not in repr(entry.headers)

    async def test_missing_secret_is_401(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A callback without x-webhook-secret is refused."""
        job = await make_job(live)
        answer = await client.post(f"/hooks/apiframe/{TOKEN}", json=APIFRAME_FINISHED)
        assert 401 == answer.status_code
        await assert_untouched(live, job, calls)
        assert ["missing_secret"] == await quarantine_reasons(live)

    async def test_a_secret_header_in_another_spelling_is_not_kept(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """`x_webhook_secret` is not the secret header, but it is redacted like it."""
        job = await make_job(live)
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=APIFRAME_FINISHED, headers={"x_webhook_secret": SECRET}
        )
        assert 401 == answer.status_code
        await assert_untouched(live, job, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert ("missing_secret", REDACTED) == (entry.reason, entry.headers["x_webhook_secret"])
        assert SECRET not in repr(entry)

    async def test_unknown_token_is_404(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A token that names no job is not found, and the quarantine does not keep the token."""
        job = await make_job(live)
        answer = await client.post(
            "/hooks/apiframe/not-a-real-token",
            json=APIFRAME_FINISHED,
            headers={"x-webhook-secret": SECRET},
        )
        assert 404 == answer.status_code
        await assert_untouched(live, job, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert "unknown_token" == entry.reason
        assert "not-a-real-token" not in entry.path

    async def test_token_of_another_provider_is_404(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A job's token only works under its own provider's path."""
        job = await make_job(live)
        answer = await client.post(f"/hooks/rixapi/{TOKEN}", json={"task_id": "x", "status": "3"})
        assert 404 == answer.status_code
        await assert_untouched(live, job, calls)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b'{"task_id": "29e9", "status": ', "bad_json"),
            (b"\xff\xfe not json", "bad_json"),
            (b'{"task_id": "29e9", "status": "\xff"}', "bad_json"),
            (b"[1, 2, 3]", "not_an_object"),
            (b'"finished"', "not_an_object"),
            (b'{"task_id": "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a"}', "bad_payload"),
        ],
    )
    async def test_malformed_bodies_are_400_and_kept(
        self,
        live: LiveReceiver,
        client: httpx.AsyncClient,
        calls: Calls,
        body: bytes,
        reason: str,
    ) -> None:
        """Broken JSON, a non-object or a body without a status is refused; the raw body is kept."""
        job = await make_job(live)
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}",
            content=body,
            headers={"x-webhook-secret": SECRET, "content-type": "application/json"},
        )
        assert 400 == answer.status_code
        assert "Traceback" not in answer.text
        await assert_untouched(live, job, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert (reason, body) == (entry.reason, entry.body)

    async def test_task_id_of_another_task_is_refused(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A body about another task than the job's changes nothing."""
        job = await make_job(live)
        body = {**APIFRAME_FINISHED, "task_id": "another-task"}
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=body, headers={"x-webhook-secret": SECRET}
        )
        assert 400 == answer.status_code
        await assert_untouched(live, job, calls)
        assert ["task_mismatch"] == await quarantine_reasons(live)

    async def test_oversized_body_is_413(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A body over RECEIVER_MAX_BODY_BYTES is refused without being stored whole."""
        job = await make_job(live)
        body = {**APIFRAME_FINISHED, "padding": "x" * 5000}
        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}", json=body, headers={"x-webhook-secret": SECRET}
        )
        assert 413 == answer.status_code
        await assert_untouched(live, job, calls)
        assert ["too_large"] == await quarantine_reasons(live)

    async def test_oversized_chunked_body_is_413(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A body without Content-Length is cut off once it passes the limit."""
        job = await make_job(live)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        answer = await client.post(
            f"/hooks/apiframe/{TOKEN}", content=chunks(), headers={"x-webhook-secret": SECRET}
        )
        assert 413 == answer.status_code
        await assert_untouched(live, job, calls)


class TestHostileBodies:
    """Bodies built to break a parser get a 400 and are kept, never a 500."""

    async def test_deeply_nested_json_is_400(
        self, tmp_path: Path, handlers: Registry, calls: Calls
    ) -> None:
        """JSON nested thousands deep (under the size limit) is refused as bad JSON."""
        depth = 5000
        body = b'{"status":"1","a":' + b'{"b":' * depth + b"1" + b"}" * depth + b"}"
        async with running_receiver(tmp_path, handlers=handlers) as live:
            job = await make_job(live, "rixapi", secret=None)
            async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
                answer = await http.post(f"/hooks/rixapi/{TOKEN}", content=body)
                admin = await http.post(
                    "/jobs",
                    content=b'{"provider":"rixapi","input":' + body + b"}",
                    headers={**live.admin_headers, "content-type": "application/json"},
                )
            assert (400, 400) == (answer.status_code, admin.status_code)
            await assert_untouched(live, job, calls)
            assert ["bad_json"] == await quarantine_reasons(live)

    async def test_quarantine_keeps_whole_bodies_only_from_proven_callers(
        self, tmp_path: Path, handlers: Registry
    ) -> None:
        """A bad body on a job's own URL is kept (to 64 KiB); a guessed token keeps only 4 KiB."""
        body = b"x" * 10_000
        async with running_receiver(tmp_path, handlers=handlers) as live:
            await make_job(live, "rixapi", secret=None)
            async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
                await http.post(f"/hooks/rixapi/{TOKEN}", content=body)
                await http.post("/hooks/rixapi/guessed-token", content=body)
            kept = {e.reason: len(e.body) for e in await live.runtime.store.list_quarantine()}
        assert {"bad_json": 10_000, "unknown_token": 4096} == kept


class TestStoreDown:
    """A store that cannot commit answers 503 with Retry-After, never 500."""

    async def test_locked_database_gives_503_and_recovers(
        self, tmp_path: Path, handlers: Registry, calls: Calls
    ) -> None:
        """While another connection holds the write lock the hook answers 503; after, 200.

        A 50 ms busy timeout makes the lock show at once, but a loaded machine's fsync can
        outlast it too: the setup and the recovery are retried as a provider would retry.
        """
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}", busy_timeout_ms=50)
        async with running_receiver(tmp_path, handlers=handlers, store=store) as live:
            job = await retried(lambda: make_job(live))
            blocker = sqlite3.connect(tmp_path / "receiver.db", isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
                headers = {"x-webhook-secret": SECRET}

                async def post() -> httpx.Response:
                    return await http.post(
                        f"/hooks/apiframe/{TOKEN}", json=APIFRAME_FINISHED, headers=headers
                    )

                refused = await post()
                blocker.execute("ROLLBACK")
                blocker.close()
                answers = [await post()]
                while answers[-1].status_code == 503 and len(answers) < 20:
                    await asyncio.sleep(0.1)
                    answers.append(await post())
            assert (503, "5") == (refused.status_code, refused.headers.get("retry-after"))
            assert 200 == answers[-1].status_code
            assert {503} >= {answer.status_code for answer in answers[:-1]}
            await settle(live)
            assert [(job.id, "succeeded", 1.0)] == calls.events


class TestRixapiCallbacks:
    """rixapi posts without credentials: the job's token is the credential."""

    @pytest.mark.parametrize("wrapped", [False, True])
    async def test_bare_and_wrapped_bodies_with_string_statuses(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls, wrapped: bool
    ) -> None:
        """Status "1" then "3" move the job to running then succeeded, bare or wrapped."""
        job = await make_job(
            live, "rixapi", task_id="0ab3bfe2-be23-4635-8c35-890fb2c1732d", secret=None
        )
        running = {"task_id": "0ab3bfe2-be23-4635-8c35-890fb2c1732d", "status": "1"}
        done = {
            "task_id": "0ab3bfe2-be23-4635-8c35-890fb2c1732d",
            "status": "3",
            "video_url": "https://cdn.example/v.mp4",
            "poster": "https://cdn.example/p.jpg",
            "create_time": "1733000000",
            "update_time": "1733000090",
        }
        for data in (running, done):
            body = {"code": 200, "msg": "success", "data": data} if wrapped else data
            answer = await client.post(f"/hooks/rixapi/{TOKEN}", json=body)
            assert 200 == answer.status_code
        await settle(live)
        stored = await live.runtime.store.get_job(job.id)
        assert stored is not None
        assert (Status.SUCCEEDED, "https://cdn.example/v.mp4", "https://cdn.example/p.jpg") == (
            stored.status,
            stored.result_url,
            stored.preview_url,
        )
        assert ["running", "succeeded"] == [status for _, status, _ in calls.events]


class TestNudges:
    """A GET ?uuid= only schedules a pull; it never carries data."""

    def test_uuid_is_found_after_a_second_question_mark(self) -> None:
        """`?token=abc?uuid=X`, plain `uuid=X` and encoded values are all understood."""
        assert "X-1" == nudge_uuid("token=abc?uuid=X-1")
        assert "X-1" == nudge_uuid("uuid=X-1")
        assert "X 1" == nudge_uuid("a=1&uuid=X%201")
        assert nudge_uuid("a=1") is None
        assert nudge_uuid("notuuid=1") is None

    @pytest.mark.parametrize("query", ["uuid=task-1", "token=abc?uuid=task-1", ""])
    async def test_nudge_schedules_a_poll_and_is_kept(
        self, live: LiveReceiver, client: httpx.AsyncClient, query: str
    ) -> None:
        """A plain, a glued-on (`?a=b?uuid=`) or an empty nudge answers 202 and schedules a poll."""
        job = await make_job(live, "aivideoapi", task_id="task-1", secret=None)
        await live.runtime.poller.stop()  # keep the poll scheduled so the test can see it
        answer = await client.get(f"/hooks/aivideoapi/{TOKEN}?{query}")
        assert 202 == answer.status_code
        [raw] = await live.runtime.store.list_requests(job.id)
        assert "GET" == raw.method
        assert query.replace("abc", "[redacted]") == raw.query
        due = await live.runtime.store.next_poll_at()
        assert due is not None and due <= now()

    async def test_nudge_for_another_task_changes_nothing(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A uuid that is not the job's task is refused and schedules no poll."""
        job = await make_job(live, "aivideoapi", task_id="task-1", secret=None)
        answer = await client.get(f"/hooks/aivideoapi/{TOKEN}?token=abc?uuid=task-2")
        assert 400 == answer.status_code
        assert await live.runtime.store.next_poll_at() is None
        await assert_untouched(live, job, calls)
        assert ["task_mismatch"] == await quarantine_reasons(live)

    async def test_nudge_to_a_provider_without_status_api_is_refused(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """runway_ai has no status API, so a GET there has nothing to pull."""
        await make_job(live, "runway_ai", task_id=None, secret=None)
        answer = await client.get(f"/hooks/runway_ai/{TOKEN}")
        assert 405 == answer.status_code


class TestStaticRoute:
    """`POST /hooks/{provider}` takes tasks submitted elsewhere, proven by a static secret."""

    async def test_unknown_task_creates_the_job(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A first callback for an unknown task creates its job; the next one finds it."""
        headers = {"x-webhook-secret": STATIC_SECRET}
        for body in (APIFRAME_PROGRESS, APIFRAME_FINISHED):
            answer = await client.post("/hooks/apiframe", json=body, headers=headers)
            assert 200 == answer.status_code
        job = await live.runtime.store.job_by_task(
            "apiframe", "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a"
        )
        assert job is not None and Status.SUCCEEDED == job.status
        await settle(live)
        assert [(job.id, "running", 0.4), (job.id, "succeeded", 1.0)] == calls.events

    async def test_wrong_static_secret_is_401(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A wrong or missing static secret creates nothing."""
        for headers in ({"x-webhook-secret": SECRET}, {}):
            answer = await client.post("/hooks/apiframe", json=APIFRAME_FINISHED, headers=headers)
            assert 401 == answer.status_code
        page = await live.runtime.store.list_jobs()
        assert [] == page.items
        assert ["missing_secret", "wrong_secret"] == sorted(await quarantine_reasons(live))
        await settle(live)
        assert [] == calls.events

    async def test_route_is_off_without_a_configured_secret(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A provider with no static secret configured has no static route."""
        answer = await client.post(
            "/hooks/rixapi", json={"task_id": "t", "status": "3"}, headers={"x-webhook-secret": "x"}
        )
        assert 404 == answer.status_code

    async def test_body_without_task_id_is_400(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """Without a task id there is no job to create or find."""
        answer = await client.post(
            "/hooks/apiframe",
            json={"status": "finished"},
            headers={"x-webhook-secret": STATIC_SECRET},
        )
        assert 400 == answer.status_code
        assert ["no_task_id"] == await quarantine_reasons(live)


class CountingStore(SQLiteStore):
    """A SQLite store that notes each job lookup and record the routes ask of it."""

    def __init__(self, url: str):
        super().__init__(url)
        self.calls: list[str] = []

    async def job_by_token(self, token_hash: str) -> TokenMatch | None:
        self.calls.append("job_by_token")
        return await super().job_by_token(token_hash)

    async def get_job(self, job_id: str) -> Job | None:
        self.calls.append("get_job")
        return await super().get_job(job_id)

    async def record(self, *args: Any, **kwargs: Any) -> Recorded:
        self.calls.append("record")
        return await super().record(*args, **kwargs)

    async def record_by_token(self, *args: Any, **kwargs: Any) -> Recorded | None:
        self.calls.append("record_by_token")
        return await super().record_by_token(*args, **kwargs)

    async def record_nudge(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("record_nudge")
        await super().record_nudge(*args, **kwargs)

    async def record_nudge_by_token(self, *args: Any, **kwargs: Any) -> Job | None:
        self.calls.append("record_nudge_by_token")
        return await super().record_nudge_by_token(*args, **kwargs)


class TestOneWriteByToken:
    """A callback or a nudge to a job's own URL is one store write, its job looked up inside it."""

    @pytest.mark.parametrize(
        ("provider", "secret", "body"),
        [
            # Unauthenticated, confirmed by pulling: its progress is believed as it comes.
            ("rixapi", None, {"task_id": "0ab3bfe2-be23", "status": "1", "progress": "50"}),
            ("apiframe", SECRET, {**APIFRAME_PROGRESS, "task_id": "0ab3bfe2-be23"}),
        ],
    )
    async def test_no_read_before_the_write(
        self, tmp_path: Path, provider: str, secret: str | None, body: dict[str, Any]
    ) -> None:
        store = CountingStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        env = {"RECEIVER_RIXAPI_BASE_URL": "http://127.0.0.1:9"}
        async with running_receiver(tmp_path, env=env, store=store) as live:
            job = await make_job(live, provider, task_id="0ab3bfe2-be23", secret=secret)
            store.calls.clear()
            headers = {"x-webhook-secret": secret} if secret else {}
            async with httpx.AsyncClient(base_url=live.url) as client:
                answer = await client.post(f"/hooks/{provider}/{TOKEN}", json=body, headers=headers)
            calls = list(store.calls)
            stored = await store.get_job(job.id)
        assert 200 == answer.status_code, answer.text
        assert ["record_by_token"] == calls
        assert stored is not None
        assert (Status.RUNNING, 0.5 if provider == "rixapi" else 0.4) == (
            stored.status,
            stored.progress,
        )

    async def test_a_nudge_reads_nothing_before_its_write(self, tmp_path: Path) -> None:
        store = CountingStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        env = {"RECEIVER_AIVIDEOAPI_BASE_URL": "http://127.0.0.1:9"}
        async with running_receiver(tmp_path, env=env, store=store) as live:
            job = await make_job(live, "aivideoapi", task_id="0ab3bfe2-be23", secret=None)
            store.calls.clear()
            async with httpx.AsyncClient(base_url=live.url) as client:
                answer = await client.get(f"/hooks/aivideoapi/{TOKEN}?uuid=0ab3bfe2-be23")
            calls = list(store.calls)
            kept = await store.list_requests(job.id)
        assert 202 == answer.status_code, answer.text
        assert ["record_nudge_by_token"] == calls
        assert ["GET"] == [raw.method for raw in kept]
