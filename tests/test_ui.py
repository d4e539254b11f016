"""The dashboard at /ui: its session and CSRF rules over HTTP, then the real thing in a
headless Chromium (Debian's, installed by .ci/run) driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import DeliveryInfo, Registry
from receiver.models import Event, Job, Status, StoredFile, Update, new_id, now
from receiver.serving import bind, serve_in_loop
from receiver.store import NewJob, Store, Write
from receiver.testing import LiveReceiver, running_receiver
from receiver.ui.filters import find_jobs, parse_job_query
from receiver.ui.session import COOKIE, csrf_token, csrf_valid
from receiver.verify import digest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET = "per-job-secret-value"
HOSTILE = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=1</script>"


def screenshot_dir() -> Path:
    """Where browser tests leave screenshots: $UI_ARTIFACTS, else ./artifacts (git-ignored)."""
    directory = Path(os.environ.get("UI_ARTIFACTS") or ARTIFACTS)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def shoot(page: Any, name: str) -> None:
    path = screenshot_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # shown with -s or on failure


class Flaky:
    """A handler that fails while `broken` is set and remembers the delivery ids it saw."""

    def __init__(self, registry: Registry) -> None:
        self.broken = True
        self.seen: list[str] = []

        @registry.on("*")
        async def flaky(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            self.seen.append(delivery.id)
            if self.broken:
                raise RuntimeError(HOSTILE)


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def flaky(registry: Registry) -> Flaky:
    return Flaky(registry)


@pytest.fixture
async def live(tmp_path: Path, registry: Registry, flaky: Flaky) -> AsyncIterator[LiveReceiver]:
    env = {"RECEIVER_HANDLER_MAX_ATTEMPTS": "1"}
    async with running_receiver(tmp_path, handlers=registry, env=env) as receiver:
        yield receiver


async def add_job(live: LiveReceiver, token: str, **fields: Any) -> str:
    at = now()
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id=f"task-{token}",
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
        **fields,
    )
    await live.runtime.store.create_job(
        NewJob(job=job, token_hash=digest(token), secret_hash=digest(SECRET))
    )
    return job.id


async def callback(live: LiveReceiver, token: str, body: dict[str, Any]) -> None:
    """A real apiframe callback to the job's own URL, with its secret."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        answer = await client.post(
            f"/hooks/apiframe/{token}", json=body, headers={"x-webhook-secret": SECRET}
        )
    assert 200 == answer.status_code, answer.text


async def settle(live: LiveReceiver, want: list[str]) -> None:
    states: list[str] = []
    for _ in range(200):
        states = [d.state.value for d in await live.runtime.store.list_deliveries()]
        if states == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries are {states}, not {want}")


async def log_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/ui/login", data={"token": token})


async def login_cookie(live: LiveReceiver, token: str) -> str:
    """A fresh session's cookie value, from a client of its own."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        answer = await log_in(client, token)
    assert 303 == answer.status_code
    return answer.cookies[COOKIE]


async def opens(live: LiveReceiver, cookie: str) -> bool:
    """Whether the dashboard's page opens with this session cookie."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        client.cookies.set(COOKIE, cookie, path="/ui")
        return 200 == (await client.get("/ui")).status_code


async def log_out(live: LiveReceiver, cookie: str) -> int:
    """Press the page's "Log out" (with its CSRF value); the answer's status."""
    csrf = csrf_token(live.runtime.admin_token_digest, cookie)
    async with httpx.AsyncClient(base_url=live.url) as client:
        client.cookies.set(COOKIE, cookie, path="/ui")
        return (await client.post("/ui/logout", data={"csrf": csrf})).status_code


class TestSession:
    """The admin token is traded once for a cookie that does not contain it."""

    async def test_pages_send_strangers_to_the_login_form(self, live: LiveReceiver) -> None:
        """Without a session, pages redirect to the login form and the stream is refused."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            answer = await client.get("/ui")
            assert (303, "/ui/login?next=%2Fui") == (
                answer.status_code,
                answer.headers["location"],
            )
            assert 401 == (await client.get("/ui/stream")).status_code
            login = await client.get("/ui/login")
            assert 200 == login.status_code and 'name="token"' in login.text

    async def test_wrong_token_gets_no_cookie(self, live: LiveReceiver) -> None:
        """A wrong token is a 401 with the form again, and no session."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            answer = await log_in(client, "not-the-token")
            assert 401 == answer.status_code
            assert "set-cookie" not in answer.headers

    async def test_guessing_the_token_is_rate_limited(self, tmp_path: Path) -> None:
        """After a burst of wrong tokens the login answers 429, even to the right one."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "3", "RECEIVER_AUTH_FAILURE_RATE": "0.01"}
        async with (
            running_receiver(tmp_path, env=env) as receiver,
            httpx.AsyncClient(base_url=receiver.url) as client,
        ):
            codes = [(await log_in(client, f"guess-{i}")).status_code for i in range(5)]
            assert 429 in codes and codes[0] == 401
            answer = await log_in(client, receiver.admin_token)
            assert 429 == answer.status_code
            assert "set-cookie" not in answer.headers

    async def test_a_forged_first_forwarded_line_does_not_escape_the_limit(
        self, tmp_path: Path
    ) -> None:
        """Behind a trusted proxy that appends its own X-Forwarded-For line, a caller who
        forges a new first line each time is still limited by the proxy's line."""
        env = {
            "RECEIVER_AUTH_FAILURE_BURST": "3",
            "RECEIVER_AUTH_FAILURE_RATE": "0.01",
            "RECEIVER_TRUSTED_PROXIES": "127.0.0.1",
        }
        async with (
            running_receiver(tmp_path, env=env) as receiver,
            httpx.AsyncClient(base_url=receiver.url) as client,
        ):
            codes = [
                (
                    await client.post(
                        "/ui/login",
                        data={"token": f"guess-{n}"},
                        headers=[
                            ("x-forwarded-for", f"6.6.6.{n}"),
                            ("x-forwarded-for", "198.51.100.7"),
                        ],
                    )
                ).status_code
                for n in range(5)
            ]
        assert [401, 401, 401, 429, 429] == codes

    async def test_cookie_is_httponly_strict_and_not_the_token(self, live: LiveReceiver) -> None:
        """The cookie is HttpOnly and SameSite=Strict and holds neither the token nor its hash."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            answer = await log_in(client, live.admin_token)
            assert (303, "/ui") == (answer.status_code, answer.headers["location"])
            cookie = answer.headers["set-cookie"]
            assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
            assert live.admin_token not in cookie
            assert digest(live.admin_token) not in cookie
            page = await client.get("/ui")
            assert 200 == page.status_code
            assert "script-src 'self'" in page.headers["content-security-policy"]

    async def test_login_returns_only_to_dashboard_pages(self, live: LiveReceiver) -> None:
        """After logging in the browser goes back where it was, but never off the dashboard."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            strangers = await client.get("/ui?status=failed&since=2h")
            assert (
                "/ui/login?next=%2Fui%3Fstatus%3Dfailed%26since%3D2h"
                == (strangers.headers["location"])
            )
            for asked, landing in (
                ("/ui/jobs/job_1", "/ui/jobs/job_1"),
                ("/ui?status=failed&since=2h", "/ui?status=failed&since=2h"),
                ("https://evil.example/ui", "/ui"),
                ("//evil.example/ui", "/ui"),
            ):
                answer = await client.post(
                    "/ui/login", data={"token": live.admin_token, "next": asked}
                )
                assert landing == answer.headers["location"]

    async def test_a_forged_cookie_is_refused(self, live: LiveReceiver) -> None:
        """A cookie the receiver did not issue opens no session, whatever its shape."""
        for forged in (f"{int(now())}.{'0' * 64}", "A" * 43, "x" * 5000):
            assert not await opens(live, forged)

    async def test_replay_without_csrf_is_refused(self, live: LiveReceiver) -> None:
        """A logged-in post without the page's CSRF value replays nothing."""
        job_id = await add_job(live, "tok1")
        await callback(live, "tok1", {"task_id": "task-tok1", "status": "processing"})
        await settle(live, ["dead"])
        [dead] = await live.runtime.store.list_deliveries()
        async with httpx.AsyncClient(base_url=live.url) as client:
            await log_in(client, live.admin_token)
            for form in ({}, {"csrf": "guess", "job": job_id}):
                answer = await client.post(f"/ui/deliveries/{dead.id}/replay", data=form)
                assert 401 == answer.status_code
        assert ["dead"] == [d.state.value for d in await live.runtime.store.list_deliveries()]


class TestSessionLifetime:
    """A session is a random id kept by the store: it ends at logout and after the TTL."""

    async def test_two_logins_in_the_same_second_get_different_sessions(
        self, live: LiveReceiver
    ) -> None:
        """Sessions are not derived from the time: two at once differ, and each ends alone."""
        first = second = ""
        for _ in range(20):  # until both logins fall in one wall-clock second
            started = int(time.time())
            first, second = await asyncio.gather(
                login_cookie(live, live.admin_token), login_cookie(live, live.admin_token)
            )
            if int(time.time()) == started:
                break
        else:
            pytest.fail("no two logins within one second")
        assert first != second
        assert 43 == len(first)  # 256 random bits, URL-safe
        await log_out(live, first)
        assert (False, True) == (await opens(live, first), await opens(live, second))

    async def test_logout_revokes_the_cookie(self, live: LiveReceiver) -> None:
        """A cookie kept from before logout opens nothing: no page, no stream, no post."""
        cookie = await login_cookie(live, live.admin_token)
        assert await opens(live, cookie)
        assert 303 == await log_out(live, cookie)
        async with httpx.AsyncClient(base_url=live.url) as client:
            client.cookies.set(COOKIE, cookie, path="/ui")
            assert 303 == (await client.get("/ui")).status_code
            assert 401 == (await client.get("/ui/stream")).status_code
        assert 401 == await log_out(live, cookie)

    async def test_session_expires_after_the_ttl(self, tmp_path: Path) -> None:
        """With RECEIVER_SESSION_TTL=1 the cookie says Max-Age=1 and stops working after it."""
        env = {"RECEIVER_SESSION_TTL": "1"}
        async with running_receiver(tmp_path, env=env) as live:
            async with httpx.AsyncClient(base_url=live.url) as client:
                answer = await log_in(client, live.admin_token)
            assert "max-age=1;" in answer.headers["set-cookie"].lower() + ";"
            cookie = answer.cookies[COOKIE]
            assert await opens(live, cookie)
            await asyncio.sleep(1.2)
            assert not await opens(live, cookie)

    async def test_sessions_are_shared_by_receivers_on_one_database(self, tmp_path: Path) -> None:
        """A login on one receiver works on another with the same store; logout ends both."""
        async with running_receiver(tmp_path) as one, running_receiver(tmp_path) as two:
            cookie = await login_cookie(one, one.admin_token)
            assert await opens(two, cookie)
            await log_out(two, cookie)
            assert not await opens(one, cookie)

    async def test_a_new_admin_token_ends_every_session(self, tmp_path: Path) -> None:
        """Sessions are kept under a digest keyed by the admin token: rotating it logs all out."""
        async with running_receiver(tmp_path) as live:
            cookie = await login_cookie(live, live.admin_token)
        rotated = "another-admin-token-" + "x" * 20
        async with running_receiver(tmp_path, admin_token=rotated) as live:
            assert not await opens(live, cookie)

    @pytest.mark.parametrize(
        ("public_url", "secure"),
        [("https://hooks.example.test", True), ("http://127.0.0.1:9", False)],
    )
    async def test_cookie_is_secure_when_the_public_url_is_https(
        self, tmp_path: Path, public_url: str, secure: bool
    ) -> None:
        """Behind https the cookie carries Secure (on plain http a browser would drop it)."""
        env = {"RECEIVER_PUBLIC_URL": public_url}
        async with (
            running_receiver(tmp_path, env=env) as live,
            httpx.AsyncClient(base_url=live.url) as client,
        ):
            cookie = (await log_in(client, live.admin_token)).headers["set-cookie"].lower()
        assert (secure, True, True) == (
            "; secure" in cookie,
            "; httponly" in cookie,
            "; samesite=strict" in cookie,
        )

    def test_csrf_is_bound_to_the_session(self) -> None:
        """A CSRF value made for one session is refused with another."""
        first, second = "session-one", "session-two"
        assert csrf_valid("key", first, csrf_token("key", first))
        assert not csrf_valid("key", second, csrf_token("key", first))
        assert not csrf_valid("key", first, None)


class TestEscaping:
    """Provider data is shown as text: no markup, no script, no javascript: links."""

    async def test_hostile_fields_are_escaped(self, live: LiveReceiver) -> None:
        """A script in a status and a javascript: result URL stay inert text."""
        job_id = await add_job(live, "tok2")
        await live.runtime.ingest.record(
            Write(
                update=Update(
                    status=Status.SUCCEEDED,
                    raw_status="<script>alert(1)</script>",
                    result_url="javascript:alert(1)",
                    payload={"note": HOSTILE, "api_key": "sk-live-123"},
                ),
                source="poll",
                job_id=job_id,
            )
        )
        async with httpx.AsyncClient(base_url=live.url) as client:
            await log_in(client, live.admin_token)
            page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert 'src="javascript:' not in page and 'href="javascript:' not in page
        assert "<img src=x" not in page
        assert "sk-live-123" not in page  # payload fields named like credentials are redacted

    async def test_credentials_inside_lists_are_redacted(self, live: LiveReceiver) -> None:
        """A credential in an object inside a list of the payload is not shown."""
        job_id = await add_job(live, "tok3")
        payload = {"outputs": [{"url": "https://x/v.mp4", "Api-Key": "sk-in-a-list-123"}]}
        await live.runtime.ingest.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="x", payload=payload),
                source="poll",
                job_id=job_id,
            )
        )
        async with httpx.AsyncClient(base_url=live.url) as client:
            await log_in(client, live.admin_token)
            page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "https://x/v.mp4" in page
        assert "sk-in-a-list-123" not in page


def _chromium_or_skip() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")


@contextlib.asynccontextmanager
async def chromium_page(*, javascript: bool = True) -> AsyncIterator[Any]:
    """A fresh page in headless Chromium, with or without JavaScript."""
    _chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, java_script_enabled=javascript
            )
            yield await context.new_page()
        finally:
            await browser.close()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A fresh page in headless Chromium."""
    async with chromium_page() as fresh:
        yield fresh


@pytest.fixture
async def page_without_js() -> AsyncIterator[Any]:
    """A fresh page in headless Chromium with JavaScript turned off."""
    async with chromium_page(javascript=False) as fresh:
        yield fresh


async def browser_log_in(page: Any, live: LiveReceiver, path: str) -> None:
    await page.goto(live.url + path)
    assert "/ui/login?next=" in page.url
    await page.fill("#token", live.admin_token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**{path}")


class TestInChromium:
    """The dashboard in a real browser: live updates without a reload, and replay."""

    async def test_job_moves_to_succeeded_without_a_reload(
        self, live: LiveReceiver, page: Any
    ) -> None:
        """A callback sent while the page is open turns the job's row succeeded in place."""
        from playwright.async_api import expect

        job_id = await add_job(live, "tok3")
        await callback(
            live, "tok3", {"task_id": "task-tok3", "status": "processing", "percentage": "40"}
        )
        await browser_log_in(page, live, "/ui")
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        await expect(row.locator('[data-field="status"]')).to_have_text("running")
        await expect(page.locator("body[data-live=yes]")).to_have_count(1)
        await page.evaluate("window.__sameDocument = true")
        await callback(
            live,
            "tok3",
            {
                "task_id": "task-tok3",
                "status": "finished",
                "percentage": 100,
                "video_url": "https://cdn.example.test/fox.mp4",
            },
        )
        await expect(row.locator('[data-field="status"]')).to_have_text("succeeded", timeout=10_000)
        await expect(row.locator(".pct")).to_have_text("100%")
        assert await page.evaluate("window.__sameDocument === true")  # no reload happened
        await shoot(page, "ui-jobs")

    async def test_replay_button_runs_the_delivery_again(
        self, live: LiveReceiver, page: Any, flaky: Flaky
    ) -> None:
        """Pressing replay on a dead delivery runs its handler again under the same id."""
        from playwright.async_api import expect

        job_id = await add_job(live, "tok4")
        await callback(
            live,
            "tok4",
            {
                "task_id": "task-tok4",
                "status": "finished",
                "percentage": 100,
                "video_url": live.url + "/ui/static/missing.mp4",
            },
        )
        await settle(live, ["dead"])
        [dead] = await live.runtime.store.list_deliveries()
        kept = StoredFile(
            path="/srv/receiver/files/result.mp4",
            sha256="0f" * 32,
            size=48_213,
            content_type="video/mp4",
            url=live.url + "/ui/static/missing.mp4",
            stored_at=now(),
        )
        await live.runtime.store.save_file(job_id, "result", kept)
        await browser_log_in(page, live, f"/ui/jobs/{job_id}")
        await expect(page.locator('#files tr[data-file="result"]')).to_contain_text("47.1 KiB")
        row = page.locator(f'tr[data-delivery-id="{dead.id}"]')
        await expect(row.locator('[data-field="state"]')).to_have_text("dead")
        await expect(row.locator('[data-field="last_error"]')).to_contain_text("onerror")
        assert await page.evaluate("window.__pwned === undefined")  # the error stayed text
        assert 1 == await page.locator("video#result-video").count()
        flaky.broken = False
        await row.locator("button", has_text="Replay").click()
        await expect(page.locator("p.flash")).to_contain_text("Replayed 1 delivery")
        await expect(row.locator('[data-field="state"]')).to_have_text("done", timeout=10_000)
        await expect(row.locator('[data-field="attempts"]')).to_have_text("1")
        assert [dead.id, dead.id] == flaky.seen
        await shoot(page, "ui-job")

    async def test_a_dead_deliverys_traceback_unfolds_under_its_error(
        self, live: LiveReceiver, page: Any
    ) -> None:
        """The error's first line stays on the row; its traceback, as text, unfolds beneath."""
        from playwright.async_api import expect

        job_id = await add_job(live, "tok5")
        await callback(
            live, "tok5", {"task_id": "task-tok5", "status": "processing", "percentage": "40"}
        )
        await settle(live, ["dead"])
        [dead] = await live.runtime.store.list_deliveries()
        await browser_log_in(page, live, f"/ui/jobs/{job_id}")
        await expect(page.locator("body[data-live=yes]")).to_have_count(1)
        cell = page.locator(f'tr[data-delivery-id="{dead.id}"] td.error')
        await expect(cell.locator('[data-field="last_error"]')).to_have_text(
            f"RuntimeError: {HOSTILE}"
        )
        trace = cell.locator("details pre")
        await expect(trace).to_be_hidden()
        await cell.locator("details summary", has_text="traceback").click()
        await expect(trace).to_be_visible()
        raising = next(
            number
            for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1)
            if "raise RuntimeError(HOSTILE)" in line
        )
        await expect(trace).to_contain_text(f'File "{__file__}", line {raising}, in flaky')
        await expect(trace).to_contain_text("raise RuntimeError(HOSTILE)")
        assert await page.evaluate("window.__pwned === undefined")  # the error stayed text


async def put_job(
    live: LiveReceiver,
    *,
    provider: str = "apiframe",
    status: Status = Status.QUEUED,
    metadata: dict[str, Any] | None = None,
    created_at: float | None = None,
    task_id: str | None = None,
    **fields: Any,
) -> Job:
    """A job stored as it is given (no callback), for the list's filters to find."""
    at = now() if created_at is None else created_at
    job = Job(
        id=new_id("job"),
        provider=provider,
        task_id=task_id or new_id("task"),
        status=status,
        metadata=metadata or {},
        created_at=at,
        updated_at=at,
        **fields,
    )
    await live.runtime.store.create_job(NewJob(job=job))
    return job


@contextlib.asynccontextmanager
async def logged_in(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert 303 == (await log_in(client, live.admin_token)).status_code
        yield client


def listed(html: str) -> list[str]:
    """The job ids in the list's rows, top to bottom."""
    return re.findall(r'<tr data-job-id="([^"]+)"', html)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


async def dead_deliveries(live: LiveReceiver, count: int) -> list[str]:
    """`count` jobs whose one delivery died (the flaky handler is broken); their job ids."""
    job_ids = []
    for n in range(count):
        token = f"dead{n}"
        job_ids.append(await add_job(live, token))
        await callback(live, token, {"task_id": f"task-{token}", "status": "processing"})
    await settle(live, ["dead"] * count)
    return job_ids


class TestJobListFilters:
    """The job list is filtered, searched and paged by its query string, rendered on the server."""

    async def test_status_provider_and_metadata_filters(self, live: LiveReceiver) -> None:
        """status, provider and metadata=key=value each narrow the list, and stay in the form."""
        wanted = await put_job(live, status=Status.FAILED, metadata={"customer": "acme"})
        other_customer = await put_job(live, status=Status.FAILED, metadata={"customer": "zeta"})
        queued = await put_job(live, metadata={"customer": "acme"})
        rixapi = await put_job(
            live, provider="rixapi", status=Status.FAILED, metadata={"customer": "acme"}
        )
        async with logged_in(live) as client:
            failed = (await client.get("/ui", params={"status": "failed"})).text
            narrow = await client.get(
                "/ui?status=failed&provider=apiframe&metadata=customer%3Dacme"
            )
        assert [rixapi.id, other_customer.id, wanted.id] == listed(failed)
        assert queued.id not in listed(failed)
        assert (200, [wanted.id]) == (narrow.status_code, listed(narrow.text))
        assert '<option value="failed" selected>' in narrow.text
        assert '<option value="apiframe" selected>' in narrow.text
        assert 'name="metadata" value="customer=acme"' in narrow.text

    async def test_since_keeps_newer_jobs_only(self, live: LiveReceiver) -> None:
        """since takes a duration (1d) or a date; older jobs are left out, with no next page."""
        old = await put_job(live, created_at=now() - 3 * 86400)
        new = await put_job(live)
        two_days_ago = time.strftime("%Y-%m-%dT%H:%M", time.localtime(now() - 2 * 86400))
        async with logged_in(live) as client:
            for since in ("1d", "36h", two_days_ago):
                answer = await client.get("/ui", params={"since": since, "limit": "1"})
                assert [new.id] == listed(answer.text), since
                assert 'id="next-page"' not in answer.text
            everything = await client.get("/ui", params={"since": "7d"})
        assert [new.id, old.id] == listed(everything.text)

    async def test_search_finds_a_job_by_id_or_by_task_id(self, live: LiveReceiver) -> None:
        """The search box takes a job id or a provider's task id and finds exactly that job."""
        first = await put_job(live, task_id="tk-alpha")
        second = await put_job(live, task_id="tk-beta")
        async with logged_in(live) as client:
            by_id = await client.get("/ui", params={"q": first.id})
            by_task = await client.get("/ui", params={"q": "tk-beta"})
            neither = await client.get("/ui", params={"q": "nothing-like-it"})
        assert [first.id] == listed(by_id.text)
        assert [second.id] == listed(by_task.text)
        assert ([], True) == (listed(neither.text), 'id="no-jobs"' in neither.text)

    async def test_pages_follow_the_cursor_and_keep_the_filters(self, live: LiveReceiver) -> None:
        """Older → walks every matching job once, newest first, with the filters kept."""
        failed = [(await put_job(live, status=Status.FAILED)).id for _ in range(5)]
        await put_job(live)  # queued: never on a failed page
        seen: list[str] = []
        url: str | None = "/ui?status=failed&limit=2"
        async with logged_in(live) as client:
            while url is not None:
                text = (await client.get(url)).text
                seen += listed(text)
                found = re.search(r'id="next-page" href="([^"]+)"', text)
                url = html.unescape(found[1]) if found else None
                if url is not None:
                    assert "status=failed" in url and "before=" in url
        assert list(reversed(failed)) == seen

    async def test_bad_filters_are_named_not_a_500(self, live: LiveReceiver) -> None:
        """An unknown status, a bad metadata key, an unreadable since and a bad limit are each
        named on the page (400), and the list is still shown."""
        job = await put_job(live)
        async with logged_in(live) as client:
            answer = await client.get(
                "/ui",
                params={
                    "status": "exploded",
                    "metadata": "bad key!=1",
                    "since": "last tuesday",
                    "limit": "0",
                },
            )
        assert 400 == answer.status_code
        assert "text/html" in answer.headers["content-type"]
        for said in ("exploded", "metadata key", "last tuesday", "limit must be"):
            assert said in answer.text
        assert [job.id] == listed(answer.text)

    async def test_rows_show_age_error_and_metadata(self, live: LiveReceiver) -> None:
        """Age, the error's first line with its code, and metadata as key=value are columns."""
        job = await put_job(
            live,
            status=Status.FAILED,
            created_at=now() - 7260,
            error="quota exceeded\nsecond line of detail",
            error_code="E42",
            metadata={"customer": "acme", "n": 7},
        )
        async with logged_in(live) as client:
            text = (await client.get("/ui")).text
        row = text[text.index(f'<tr data-job-id="{job.id}"') :]
        row = row[: row.index("</tr>")]
        assert 'data-field="age"' in row and ">2h 1m<" in row
        assert "quota exceeded [E42]" in row and "second line" not in row
        assert "customer=acme, n=7" in row

    async def test_only_the_plain_first_page_is_live(self, live: LiveReceiver) -> None:
        """The live stream runs on /ui alone; filtered and older pages are left as served."""
        async with logged_in(live) as client:
            plain = (await client.get("/ui")).text
            filtered = (await client.get("/ui?status=failed")).text
            older = (await client.get("/ui?before=job_zzzz")).text
        assert 'data-stream="on"' in plain
        assert 'data-stream="off"' in filtered and 'data-stream="off"' in older


class TestProviderTextIsEscaped:
    """A script in a job's error or metadata is shown as text on every page."""

    async def test_script_in_error_and_metadata_stays_text(self, live: LiveReceiver) -> None:
        """Neither the list nor the job page carries the markup; both carry its escaped text."""
        job = await put_job(
            live,
            status=Status.FAILED,
            error=SCRIPT,
            error_code=HOSTILE,
            metadata={"note": SCRIPT, "x": HOSTILE},
        )
        async with logged_in(live) as client:
            pages = [
                (await client.get("/ui")).text,
                (await client.get("/ui", params={"metadata": f"note={SCRIPT}"})).text,
                (await client.get(f"/ui/jobs/{job.id}")).text,
            ]
        for text in pages:
            assert "<script>window" not in text and "<img src=x" not in text
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text


class TestDeadPage:
    """/ui/dead lists dead deliveries; one or all are replayed, and the page says how many."""

    async def test_replay_all_says_how_many(self, live: LiveReceiver, flaky: Flaky) -> None:
        """Both dead deliveries are listed; "replay all" runs them again and says 2."""
        job_ids = await dead_deliveries(live, 2)
        async with logged_in(live) as client:
            page = await client.get("/ui/dead")
            for job_id in job_ids:
                assert f'href="/ui/jobs/{job_id}"' in page.text
            assert "RuntimeError: &lt;img src=x" in page.text
            flaky.broken = False
            answer = await client.post("/ui/dead/replay", data={"csrf": csrf_of(page.text)})
            assert (303, "/ui/dead?replayed=2") == (
                answer.status_code,
                answer.headers["location"],
            )
            await settle(live, ["done", "done"])
            after = await client.get("/ui/dead?replayed=2")
        assert "Replayed 2 deliveries" in after.text
        assert 'id="no-dead"' in after.text

    async def test_replay_one_returns_to_the_dead_page(self, live: LiveReceiver) -> None:
        """Replay from /ui/dead goes back there with the notice, the other still dead."""
        await dead_deliveries(live, 2)
        first, second = await live.runtime.store.list_deliveries()
        async with logged_in(live) as client:
            csrf = csrf_of((await client.get("/ui/dead")).text)
            answer = await client.post(
                f"/ui/deliveries/{first.id}/replay", data={"csrf": csrf, "back": "dead"}
            )
            assert "/ui/dead?replayed=1" == answer.headers["location"]
            notice = (await client.get(answer.headers["location"])).text
        assert "Replayed 1 delivery:" in notice
        states = {d.id: d.state.value for d in await live.runtime.store.list_deliveries()}
        assert "dead" == states[second.id]

    async def test_replay_all_needs_the_csrf_value(self, live: LiveReceiver) -> None:
        """Without the page's CSRF value, "replay all" is refused and nothing moves."""
        await dead_deliveries(live, 1)
        async with logged_in(live) as client:
            for form in ({}, {"csrf": "guess"}):
                assert 401 == (await client.post("/ui/dead/replay", data=form)).status_code
        assert ["dead"] == [d.state.value for d in await live.runtime.store.list_deliveries()]


class TestQuarantinePage:
    """/ui/quarantine lists refused requests with their reason, status and redacted content."""

    async def test_a_refused_callback_is_listed_escaped(self, live: LiveReceiver) -> None:
        """A callback to an unknown token shows its reason and 404, its body as text."""
        async with httpx.AsyncClient(base_url=live.url) as hooks:
            answer = await hooks.post(
                "/hooks/apiframe/not-a-real-token-value", json={"status": SCRIPT}
            )
        assert 404 == answer.status_code
        for _ in range(100):
            if await live.runtime.store.list_quarantine():
                break
            await asyncio.sleep(0.05)
        async with logged_in(live) as client:
            text = (await client.get("/ui/quarantine")).text
        row = text[text.index("<tr data-quarantine-id=") :]
        assert "unknown_token" in row and "<td>404</td>" in row and "127.0.0.1" in row
        assert "<script>window" not in text
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in row
        assert "not-a-real-token-value" not in text


class TestJobPage:
    """A job's page shows its files, a bar only while running, and a real 404."""

    async def test_downloaded_files_are_listed(self, live: LiveReceiver) -> None:
        """Each kept file shows its name, size, sha256, content type and source URL."""
        job = await put_job(live, status=Status.SUCCEEDED)
        stored = StoredFile(
            path="/var/lib/receiver/files/result.mp4",
            sha256="ab" * 32,
            size=1_572_864,
            content_type="video/mp4",
            url="https://cdn.example.test/fox.mp4",
            stored_at=now(),
        )
        await live.runtime.store.save_file(job.id, "result", stored)
        async with logged_in(live) as client:
            text = (await client.get(f"/ui/jobs/{job.id}")).text
        row = text[text.index('<tr data-file="result">') :]
        row = row[: row.index("</tr>")]
        for shown in ("1.5 MiB", "ab" * 32, "video/mp4", 'href="https://cdn.example.test/fox.mp4"'):
            assert shown in row

    async def test_an_unknown_job_is_an_html_404(self, live: LiveReceiver) -> None:
        """An unknown job id gets a page saying so, not a JSON error."""
        async with logged_in(live) as client:
            answer = await client.get("/ui/jobs/job_nope")
        assert 404 == answer.status_code
        assert "text/html" in answer.headers["content-type"]
        assert "No job job_nope." in answer.text and 'href="/ui"' in answer.text

    async def test_no_moving_bar_unless_the_job_runs(self, live: LiveReceiver) -> None:
        """Queued and failed jobs without progress show "-", a running one an indeterminate bar."""
        queued = await put_job(live)
        failed = await put_job(live, status=Status.FAILED)
        running = await put_job(live, status=Status.RUNNING)
        async with logged_in(live) as client:
            listing = (await client.get("/ui")).text
            pages = {j.id: (await client.get(f"/ui/jobs/{j.id}")).text for j in (queued, failed)}
        cells = dict(
            re.findall(r'<tr data-job-id="([^"]+)".*?data-field="progress">(.*?)</td>', listing)
        )
        assert "<progress" not in cells[queued.id] and "<progress" not in cells[failed.id]
        assert '<progress max="1">' in cells[running.id]
        for text in pages.values():
            assert "<progress" not in text

    async def test_replay_comes_back_with_a_notice(self, live: LiveReceiver) -> None:
        """Replay on a job's page redirects to it with ?replayed=1, which the page says."""
        [job_id] = await dead_deliveries(live, 1)
        [dead] = await live.runtime.store.list_deliveries()
        async with logged_in(live) as client:
            csrf = csrf_of((await client.get(f"/ui/jobs/{job_id}")).text)
            answer = await client.post(
                f"/ui/deliveries/{dead.id}/replay", data={"csrf": csrf, "back": "job"}
            )
            assert f"/ui/jobs/{job_id}?replayed=1" == answer.headers["location"]
            text = (await client.get(answer.headers["location"])).text
            again = await client.post("/ui/deliveries/dlv_unknown/replay", data={"csrf": csrf})
        assert "Replayed 1 delivery:" in text
        assert (404, "text/html") == (
            again.status_code,
            again.headers["content-type"].split(";")[0],
        )


class TestLoginHint:
    """The login page says where the token is, never what it is."""

    async def test_a_generated_token_file_is_named(self, tmp_path: Path) -> None:
        """Without RECEIVER_ADMIN_TOKEN the page names the generated file, not the server's
        directories."""
        environ = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_HANDLERS": "",
        }
        app = create_app(load_settings(environ, config_file=None), handlers=Registry())
        async with serve_in_loop(app, sock=bind()) as url, httpx.AsyncClient() as client:
            text = (await client.get(f"{url}/ui/login")).text
        path = tmp_path / "receiver.db.admin-token"
        assert "receiver.db.admin-token, beside the database" in text
        assert str(tmp_path) not in text
        assert path.read_text().strip() not in text

    async def test_a_token_from_the_environment_is_named_as_such(self, live: LiveReceiver) -> None:
        """With RECEIVER_ADMIN_TOKEN set the page names the variable, not a file."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            text = (await client.get("/ui/login")).text
        assert "RECEIVER_ADMIN_TOKEN" in text and live.admin_token not in text


class TestPagesInChromium:
    """Filters, search, paging, the dead and quarantine pages and replay, in a real browser."""

    async def test_filter_form_search_and_paging(self, live: LiveReceiver, page: Any) -> None:
        """The form puts the filters in the URL; Older → pages on; search finds one job."""
        from playwright.async_api import expect

        hostile = await put_job(
            live, status=Status.FAILED, error=SCRIPT, metadata={"customer": "acme", "x": HOSTILE}
        )
        failed = [(await put_job(live, status=Status.FAILED)).id for _ in range(3)]
        await put_job(live, status=Status.RUNNING, progress=0.4, metadata={"customer": "acme"})
        await browser_log_in(page, live, "/ui")
        await page.select_option("#f-status", "failed")
        await page.fill("#f-metadata", "customer=acme")
        await page.click(".filters button[type=submit]")
        await page.wait_for_url("**/ui?*")
        assert "status=failed" in page.url and "metadata=customer%3Dacme" in page.url
        await expect(page.locator("#jobs tbody tr")).to_have_count(1)
        await expect(page.locator(f'tr[data-job-id="{hostile.id}"] td.error')).to_have_text(SCRIPT)
        assert await page.evaluate("window.__pwned === undefined")
        await shoot(page, "ui-jobs-filtered")

        await page.goto(live.url + "/ui?status=failed&limit=2")
        rows = page.locator("#jobs tbody tr")
        await expect(rows).to_have_count(2)
        first = await rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)")
        await page.click("#next-page")
        await expect(rows).to_have_count(2)
        second = await rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)")
        assert [*reversed(failed), hostile.id] == first + second
        await shoot(page, "ui-jobs-page-2")

        await page.goto(live.url + "/ui")
        await page.fill("#f-q", failed[1])
        await page.press("#f-q", "Enter")
        await page.wait_for_url("**q=*")
        await expect(rows).to_have_count(1)
        await expect(page.locator(f'tr[data-job-id="{failed[1]}"]')).to_have_count(1)

    async def test_dead_page_replays_all(self, live: LiveReceiver, page: Any, flaky: Flaky) -> None:
        """The dead list shows both deliveries; replaying all says 2 and empties it."""
        from playwright.async_api import expect

        await dead_deliveries(live, 2)
        await browser_log_in(page, live, "/ui/dead")
        await expect(page.locator("#dead tbody tr")).to_have_count(2)
        assert await page.evaluate("window.__pwned === undefined")
        await shoot(page, "ui-dead")
        flaky.broken = False
        await page.click("button:has-text('Replay all dead deliveries')")
        await page.wait_for_url("**/ui/dead?replayed=2")
        await expect(page.locator("p.flash")).to_have_text(
            "Replayed 2 deliveries: pending again, the dispatcher runs them now."
        )
        await settle(live, ["done", "done"])
        await page.reload()
        await expect(page.locator("#no-dead")).to_be_visible()

    async def test_quarantine_page_shows_what_was_refused(
        self, live: LiveReceiver, page: Any
    ) -> None:
        """A refused callback is a row whose redacted body unfolds as text."""
        from playwright.async_api import expect

        async with httpx.AsyncClient(base_url=live.url) as hooks:
            await hooks.post("/hooks/apiframe/not-a-real-token-value", json={"status": SCRIPT})
        for _ in range(100):
            if await live.runtime.store.list_quarantine():
                break
            await asyncio.sleep(0.05)
        await browser_log_in(page, live, "/ui/quarantine")
        row = page.locator("#quarantine tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("unknown_token")
        await row.locator("summary").click()
        await expect(row.locator("pre").nth(1)).to_contain_text(SCRIPT)
        assert await page.evaluate("window.__pwned === undefined")
        await shoot(page, "ui-quarantine")

    async def test_job_page_shows_each_answer_and_its_latency(
        self, live: LiveReceiver, page: Any
    ) -> None:
        """The requests table gives, for each callback kept, our status and how long the answer
        took, once the answers are written (about a second after)."""
        from playwright.async_api import expect

        job_id = await add_job(live, "tok-answers")
        for percentage in ("40", "60"):
            body = {"task_id": "task-tok-answers", "status": "processing", "percentage": percentage}
            await callback(live, "tok-answers", body)
        for _ in range(100):
            kept = await live.runtime.store.list_requests(job_id)
            if all(raw.answer_status is not None for raw in kept):
                break
            await asyncio.sleep(0.05)
        await browser_log_in(page, live, f"/ui/jobs/{job_id}")
        rows = page.locator("#requests tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.locator('[data-field="answer"]')).to_have_text(["200", "200"])
        for latency in await rows.locator('[data-field="latency"]').all_inner_texts():
            assert re.fullmatch(r"\d+\.\d ms", latency), latency
        await shoot(page, "ui-job-requests")


class TestWithoutJavaScript:
    """Every page is served whole: with JavaScript off, login, filters and replay still work."""

    async def test_log_in_filter_and_replay_without_javascript(
        self, live: LiveReceiver, page_without_js: Any, flaky: Flaky
    ) -> None:
        """The forms are plain HTML: each step is a page load."""
        from playwright.async_api import expect

        page = page_without_js
        [job_id] = await dead_deliveries(live, 1)
        queued = await put_job(live)
        await page.goto(live.url + "/ui/login")
        await expect(page.locator(".hint")).to_contain_text("RECEIVER_ADMIN_TOKEN")
        await shoot(page, "ui-login")
        await browser_log_in(page, live, "/ui")
        await expect(page.locator("#jobs tbody tr")).to_have_count(2)
        await page.select_option("#f-status", "queued")
        await page.click(".filters button[type=submit]")
        await page.wait_for_url("**status=queued*")
        await expect(page.locator("#jobs tbody tr")).to_have_count(1)
        await expect(page.locator(f'tr[data-job-id="{queued.id}"]')).to_have_count(1)
        await shoot(page, "ui-jobs-nojs")
        flaky.broken = False
        await page.goto(live.url + "/ui/dead")
        await page.locator("#dead button", has_text="Replay").click()
        await page.wait_for_url("**/ui/dead?replayed=1")
        await expect(page.locator("p.flash")).to_contain_text("Replayed 1 delivery")
        await settle(live, ["done"])
        await page.goto(live.url + f"/ui/jobs/{job_id}")
        await expect(page.locator('#deliveries [data-field="state"]')).to_have_text("done")
        await page.goto(live.url + "/ui/jobs/job_missing")
        await expect(page.locator("main")).to_contain_text("No job job_missing.")
        await shoot(page, "ui-404")


class TestLiveOnlyOnThePlainList:
    """The unfiltered first page takes new jobs live; a filtered page is left as served."""

    async def test_new_jobs_appear_live_only_on_the_plain_list(
        self, live: LiveReceiver, page: Any
    ) -> None:
        """A job made after load appears on /ui, whole and with no bar while queued; an older
        job off the page stays off it when it changes; a page filtered for failed jobs opens
        no stream and gains no row."""
        from playwright.async_api import expect

        older = await add_job(live, "tok7")
        await add_job(live, "tok8")
        await browser_log_in(page, live, "/ui?limit=1")
        await expect(page.locator("body[data-live=yes]")).to_have_count(1)
        await callback(live, "tok7", {"task_id": "task-tok7", "status": "processing"})
        job_id = await add_job(live, "tok9", metadata={"customer": "acme"})
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        await expect(row.locator("td")).to_have_count(8, timeout=10_000)
        await expect(row.locator('[data-field="status"]')).to_have_text("queued")
        await expect(row.locator('[data-field="metadata"]')).to_have_text("customer=acme")
        assert 0 == await row.locator("progress").count()
        await callback(live, "tok9", {"task_id": "task-tok9", "status": "processing"})
        await expect(row.locator('[data-field="status"]')).to_have_text("running")
        await expect(row.locator("progress")).to_have_count(1)
        assert 0 == await page.locator(f'tr[data-job-id="{older}"]').count()
        await expect(page.locator("#jobs tbody tr")).to_have_count(2)

        await page.goto(live.url + "/ui?status=failed")
        await put_job(live, status=Status.FAILED)
        await asyncio.sleep(1.5)  # three of the stream's looks, had it been open
        await expect(page.locator("#jobs tbody tr")).to_have_count(0)
        assert await page.evaluate("document.body.dataset.live === undefined")


async def stored_job(store: Store, **fields: Any) -> Job:
    at = fields.pop("created_at", now())
    job = Job(
        id=new_id("job"),
        provider=fields.pop("provider", "apiframe"),
        task_id=fields.pop("task_id", new_id("task")),
        status=fields.pop("status", Status.QUEUED),
        created_at=at,
        updated_at=at,
        **fields,
    )
    await store.create_job(NewJob(job=job))
    return job


class TestFindJobsOnEveryBackend:
    """The list's query string means the same on SQLite and PostgreSQL."""

    async def test_filters_search_since_and_paging(self, store: Store) -> None:
        """Each filter, the search and the cursor give the same jobs on both stores."""
        old = await stored_job(store, status=Status.FAILED, created_at=now() - 3 * 86400)
        acme = [
            await stored_job(store, status=Status.FAILED, metadata={"customer": "acme", "n": 7})
            for _ in range(3)
        ]
        other = await stored_job(store, provider="rixapi", task_id="tk-x", metadata={"n": "7"})

        async def ids(**query: str) -> tuple[list[str], str | None]:
            parsed = parse_job_query({key: [value] for key, value in query.items()})
            assert [] == parsed.problems
            page = await find_jobs(store, parsed)
            return [job.id for job in page.items], page.next

        newest_first = [job.id for job in reversed(acme)]
        assert (newest_first, None) == await ids(metadata="customer=acme")
        assert ([other.id, *newest_first], None) == await ids(metadata="n=7")
        assert ([other.id], None) == await ids(provider="rixapi")
        assert ([other.id], None) == await ids(q="tk-x")
        assert ([acme[0].id], None) == await ids(q=acme[0].id, status="failed")
        assert ([], None) == await ids(q=acme[0].id, status="queued")
        assert ([*newest_first, old.id], None) == await ids(status="failed")
        assert (newest_first, None) == await ids(status="failed", since="1d")
        first, cursor = await ids(status="failed", limit="2")
        assert (newest_first[:2], acme[1].id) == (first, cursor)
        assert cursor is not None
        assert ([acme[0].id], None) == await ids(
            status="failed", since="1d", limit="2", before=cursor
        )
