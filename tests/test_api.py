"""The admin API over real HTTP: the token guard, listing, paging, and what it never shows."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.config import load_settings
from receiver.models import Job, RawRequest, Status, Update, new_id, now
from receiver.runtime import admin_token_file, ensure_admin_token
from receiver.store import NewJob, Write
from receiver.testing import LiveReceiver, running_receiver


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveReceiver]:
    async with running_receiver(tmp_path) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        yield http


async def add_job(live: LiveReceiver, provider: str, task_id: str, status: Status) -> Job:
    at = now()
    job = Job(
        id=new_id("job"),
        provider=provider,
        task_id=task_id,
        status=Status.QUEUED,
        metadata={"customer": "acme"},
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(NewJob(job=job, token_hash=f"hash-{task_id}"))
    if status is not Status.QUEUED:
        recorded = await live.runtime.ingest.record(
            Write(
                update=Update(status=status, raw_status=status.value), source="poll", job_id=job.id
            )
        )
        return recorded.job
    return job


class TestAdminGuard:
    """Admin routes answer only with the admin token."""

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "test-admin-token"},
            {"Authorization": "Basic test-admin-token"},
            {"Authorization": "Bearer"},
        ],
    )
    async def test_requests_without_the_token_are_401(
        self, client: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        """A missing, wrong or wrongly framed token is refused on every admin route."""
        for method, path in (("GET", "/jobs"), ("GET", "/jobs/x"), ("POST", "/jobs")):
            answer = await client.request(
                method, path, headers=headers, json={"provider": "apiframe"}
            )
            assert 401 == answer.status_code, (method, path)

    async def test_health_is_open(self, client: httpx.AsyncClient) -> None:
        """The health check needs no token."""
        answer = await client.get("/healthz")
        assert (200, "ok") == (answer.status_code, answer.json()["status"])

    async def test_openapi_schema_is_served(self, client: httpx.AsyncClient) -> None:
        """The OpenAPI document lists the public routes."""
        answer = await client.get("/schema/openapi.json")
        assert 200 == answer.status_code
        paths = answer.json()["paths"]
        for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/healthz"):
            assert path in paths


def client_from(live: LiveReceiver, address: str) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any of 127.0.0.0/8 on loopback)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=live.url, transport=transport, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestGuessingIsLimited:
    """Wrong admin tokens are limited per client address: 429 with Retry-After past a burst."""

    async def test_default_burst_then_429_while_another_address_works(
        self, live: LiveReceiver
    ) -> None:
        """60 wrong tokens from one address: the first 20 are 401, the rest 429; meanwhile
        another address still gets in with the right token."""
        async with client_from(live, "127.0.0.1") as guesser:
            started = time.monotonic()
            codes = [
                (await guesser.get("/jobs", headers=bearer(f"guess-{n}"))).status_code
                for n in range(60)
            ]
            locked = await guesser.get("/jobs", headers=live.admin_headers)
            elapsed = time.monotonic() - started
        assert ([401] * 20, 429) == (codes[:20], codes[20])
        # The bucket refills at 0.5 per second: that many more guesses, and no others.
        assert codes.count(401) <= 20 + math.ceil(elapsed * 0.5)
        assert {401, 429} >= set(codes)
        assert 429 == locked.status_code  # the right token too: the answer must not tell
        assert int(locked.headers["retry-after"]) >= 1
        assert "error" in locked.json()
        async with client_from(live, "127.0.0.2") as other:
            assert 200 == (await other.get("/jobs", headers=live.admin_headers)).status_code
            assert 401 == (await other.get("/jobs", headers=bearer("wrong"))).status_code

    async def test_metrics_and_login_share_the_bucket(self, tmp_path: Path) -> None:
        """/metrics and the dashboard's login count the same failures, and are closed alike."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "3", "RECEIVER_AUTH_FAILURE_RATE": "0.01"}
        async with running_receiver(tmp_path, env=env) as live, client_from(live, "127.0.0.3") as c:
            assert 401 == (await c.get("/metrics", headers=bearer("wrong-1"))).status_code
            assert 401 == (await c.post("/ui/login", data={"token": "wrong-2"})).status_code
            assert 401 == (await c.get("/jobs", headers=bearer("wrong-3"))).status_code
            for answer in (
                await c.get("/metrics", headers=live.admin_headers),
                await c.post("/ui/login", data={"token": live.admin_token}),
                await c.post("/jobs", headers=live.admin_headers, json={"provider": "x"}),
            ):
                assert 429 == answer.status_code
                assert "retry-after" in answer.headers

    async def test_the_bucket_refills(self, tmp_path: Path) -> None:
        """After Retry-After seconds the address may try again."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "1", "RECEIVER_AUTH_FAILURE_RATE": "2"}
        async with running_receiver(tmp_path, env=env) as live, client_from(live, "127.0.0.4") as c:
            assert 401 == (await c.get("/jobs", headers=bearer("wrong"))).status_code
            refused = await c.get("/jobs", headers=live.admin_headers)
            assert (429, "1") == (refused.status_code, refused.headers["retry-after"])
            await asyncio.sleep(1.0)
            assert 200 == (await c.get("/jobs", headers=live.admin_headers)).status_code

    async def test_missing_tokens_are_not_counted(self, tmp_path: Path) -> None:
        """A request without a Bearer token is refused, but is not a guess."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "2"}
        async with running_receiver(tmp_path, env=env) as live, client_from(live, "127.0.0.5") as c:
            codes = [(await c.get("/jobs")).status_code for _ in range(10)]
            assert [401] * 10 == codes
            assert 200 == (await c.get("/jobs", headers=live.admin_headers)).status_code

    async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(
        self, tmp_path: Path
    ) -> None:
        """With RECEIVER_TRUSTED_PROXIES, the address the proxy forwarded for is the one limited."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "2", "RECEIVER_TRUSTED_PROXIES": "127.0.0.0/8"}
        async with running_receiver(tmp_path, env=env) as live, client_from(live, "127.0.0.6") as c:
            guesser = {"X-Forwarded-For": "203.0.113.9"}
            for _ in range(3):
                await c.get("/jobs", headers={**guesser, **bearer("wrong")})
            assert 429 == (await c.get("/jobs", headers=guesser)).status_code
            admin = {"X-Forwarded-For": "198.51.100.7", **live.admin_headers}
            assert 200 == (await c.get("/jobs", headers=admin)).status_code


class TestAdminToken:
    """Without RECEIVER_ADMIN_TOKEN a token is generated once and kept beside the database."""

    def test_generated_token_is_stored_and_reused(self, tmp_path: Path) -> None:
        """The first start writes a private file; later starts read the same token."""
        settings = load_settings({"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
        first = ensure_admin_token(settings)
        path = admin_token_file(settings)
        assert (tmp_path / "r.db.admin-token", 0o600) == (path, path.stat().st_mode & 0o777)
        assert first == ensure_admin_token(settings)
        assert len(first) >= 32


class TestJobs:
    """Jobs can be listed, filtered, paged and inspected."""

    async def test_filters_and_paging(self, live: LiveReceiver, client: httpx.AsyncClient) -> None:
        """Filters narrow the list and `next` walks it page by page without repeats."""
        made = [
            await add_job(live, "apiframe", f"t{i}", Status.SUCCEEDED if i % 2 else Status.QUEUED)
            for i in range(5)
        ]
        await add_job(live, "rixapi", "r1", Status.RUNNING)
        headers = live.admin_headers

        succeeded = await client.get("/jobs", params={"status": "succeeded"}, headers=headers)
        assert {"t1", "t3"} == {job["task_id"] for job in succeeded.json()["items"]}
        by_provider = await client.get("/jobs", params={"provider": "rixapi"}, headers=headers)
        assert ["r1"] == [job["task_id"] for job in by_provider.json()["items"]]
        by_task = await client.get("/jobs", params={"task_id": "t2"}, headers=headers)
        assert [made[2].id] == [job["id"] for job in by_task.json()["items"]]

        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2", "provider": "apiframe", **({"next": cursor} if cursor else {})}
            page = (await client.get("/jobs", params=params, headers=headers)).json()
            seen += [job["id"] for job in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert [job.id for job in reversed(made)] == seen

    @pytest.mark.parametrize("limit", ["0", "1001", "many"])
    async def test_bad_limit_is_400(
        self, live: LiveReceiver, client: httpx.AsyncClient, limit: str
    ) -> None:
        """`limit` is a number from 1 to 1000."""
        answer = await client.get("/jobs", params={"limit": limit}, headers=live.admin_headers)
        assert 400 == answer.status_code

    async def test_unknown_status_filter_is_400(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A status outside the canonical five is refused, not ignored."""
        answer = await client.get("/jobs", params={"status": "done"}, headers=live.admin_headers)
        assert 400 == answer.status_code

    async def test_job_and_its_events(self, live: LiveReceiver, client: httpx.AsyncClient) -> None:
        """A job answers with its fields and metadata; its events come oldest first."""
        job = await add_job(live, "apiframe", "t9", Status.RUNNING)
        await live.runtime.ingest.record(
            Write(
                update=Update(
                    status=Status.SUCCEEDED, raw_status="finished", result_url="https://x/v.mp4"
                ),
                source="poll",
                job_id=job.id,
            )
        )
        answer = await client.get(f"/jobs/{job.id}", headers=live.admin_headers)
        body = answer.json()
        assert ("succeeded", 1.0, "https://x/v.mp4", {"customer": "acme"}) == (
            body["status"],
            body["progress"],
            body["result_url"],
            body["metadata"],
        )
        events = (await client.get(f"/jobs/{job.id}/events", headers=live.admin_headers)).json()
        assert ["running", "succeeded"] == [e["status"] for e in events["items"]]

    async def test_unknown_job_is_404(self, live: LiveReceiver, client: httpx.AsyncClient) -> None:
        """A job id that does not exist is not found."""
        for path in ("/jobs/job_nope", "/jobs/job_nope/events", "/jobs/job_nope/deliveries"):
            answer = await client.get(path, headers=live.admin_headers)
            assert 404 == answer.status_code


class TestSubmitAnswers:
    """POST /jobs validates its input and never echoes credentials."""

    async def test_unknown_provider_is_400(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A provider no adapter answers to is refused."""
        answer = await client.post(
            "/jobs", json={"provider": "nope", "input": {}}, headers=live.admin_headers
        )
        assert 400 == answer.status_code

    async def test_unconfigured_provider_is_400_naming_the_setting(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """Submitting to a provider without a base URL says which variable to set."""
        answer = await client.post(
            "/jobs",
            json={"provider": "apiframe", "input": {"prompt": "x"}},
            headers=live.admin_headers,
        )
        assert 400 == answer.status_code
        assert "RECEIVER_APIFRAME_BASE_URL" in answer.text

    async def test_unknown_fields_are_400(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A misspelt top-level field is an error, not silently dropped."""
        answer = await client.post(
            "/jobs", json={"provider": "apiframe", "inptu": {}}, headers=live.admin_headers
        )
        assert 400 == answer.status_code

    async def test_tracking_a_task_submitted_elsewhere(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A task id instead of input records the job without calling the provider."""
        answer = await client.post(
            "/jobs",
            json={"provider": "apiframe", "task_id": "abc-123", "metadata": {"k": "v"}},
            headers=live.admin_headers,
        )
        assert 201 == answer.status_code
        body = answer.json()
        assert ("abc-123", "queued", {"k": "v"}) == (
            body["task_id"],
            body["status"],
            body["metadata"],
        )
        for forbidden in ("token", "secret", "hash"):
            assert forbidden not in answer.text


class TestDiagnosis:
    """The quarantine, a job's raw requests and the instance id are there for the operator."""

    async def test_health_names_a_stable_instance(self, client: httpx.AsyncClient) -> None:
        """Every health check of one process names the same instance id."""
        first = (await client.get("/healthz")).json()["instance"]
        assert first.startswith("ins_")
        assert first == (await client.get("/healthz")).json()["instance"]

    async def test_quarantine_lists_rejections_with_their_reason(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A callback to an unknown token is listed with its reason and no token in its path."""
        await client.post("/hooks/apiframe/secret-token-value", json={"status": "x"})
        answer = await client.get("/quarantine", headers=live.admin_headers)
        [item] = answer.json()["items"]
        assert ("apiframe", "unknown_token", 404) == (
            item["provider"],
            item["reason"],
            item["status_code"],
        )
        assert "secret-token-value" not in answer.text

    async def test_job_requests_are_listed_redacted(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A job's raw requests come back with the secret header redacted."""
        job = await add_job(live, "apiframe", "t5", Status.QUEUED)
        raw = RawRequest(
            id=new_id("req"),
            received_at=now(),
            provider="apiframe",
            method="POST",
            path="/hooks/apiframe/[token:abc]",
            query="",
            headers={"x-webhook-secret": "[redacted]"},
            body=b"{}",
        )
        await live.runtime.ingest.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="processing"),
                source="callback",
                job_id=job.id,
                raw=raw,
            )
        )
        answer = await client.get(f"/jobs/{job.id}/requests", headers=live.admin_headers)
        [item] = answer.json()["items"]
        assert (raw.id, "[redacted]") == (item["id"], item["headers"]["x-webhook-secret"])
