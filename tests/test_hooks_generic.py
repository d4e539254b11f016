"""Generic providers over real HTTP: Standard Webhooks messages accepted, forgeries refused."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get
from litestar.params import FromPath
from standardwebhooks.webhooks import Webhook

from receiver.dispatch import Registry
from receiver.models import Job, Status, new_id, now
from receiver.serving import serve_in_loop
from receiver.store import NewJob
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import digest

OLD_SECRET = "whsec_" + base64.b64encode(b"acme-old-" + b"1" * 23).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"acme-new-" + b"2" * 23).decode()
STRANGER = "whsec_" + base64.b64encode(b"stranger-" + b"3" * 23).decode()
TASK_ID = "vid_7Hq2LmX9"
TOKEN = "tok-" + "g" * 40

# Written with spaces, as a sender might: the signature covers exactly these bytes.
SUCCEEDED = (
    b'{"type": "video.succeeded", "timestamp": "2026-11-22T01:00:00Z",'
    b' "data": {"id": "vid_7Hq2LmX9", "status": "completed",'
    b' "output_url": "https://cdn.acme.test/v.mp4"}}'
)


def running(progress: int) -> bytes:
    return json.dumps(
        {
            "type": "video.updated",
            "data": {"id": TASK_ID, "status": "processing", "progress": progress},
        }
    ).encode()


def signed(
    body: bytes, *, secret: str = NEW_SECRET, msg_id: str | None = None, at: float | None = None
) -> dict[str, str]:
    """Headers as the reference library (the `standardwebhooks` package) signs `body`."""
    msg_id = msg_id or new_id("msg")
    stamp = datetime.fromtimestamp(int(time.time() if at is None else at), tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
        "content-type": "application/json",
    }


class Calls:
    """What the handlers were called with, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float | None]] = []


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def handlers(calls: Calls) -> Registry:
    registry = Registry()

    @registry.on("*", provider="acme")
    async def record(event: Any, job: Any) -> None:
        calls.events.append((job.task_id, event.status.value, event.progress))

    return registry


@pytest.fixture
async def live(tmp_path: Path, handlers: Registry) -> AsyncIterator[LiveReceiver]:
    env = {
        "RECEIVER_GENERIC_PROVIDERS": "acme",
        # Mid-rotation: the old secret and the new one are both accepted.
        "RECEIVER_ACME_WEBHOOK_SECRET": f"{OLD_SECRET} {NEW_SECRET}",
        "RECEIVER_ACME_TOLERANCE": "300",
        "RECEIVER_MAX_BODY_BYTES": "4096",
    }
    async with running_receiver(tmp_path, handlers=handlers, env=env) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        yield http


async def settle(live: LiveReceiver) -> None:
    await live.runtime.dispatcher.drain(timeout=5)


async def the_job(live: LiveReceiver) -> Job | None:
    return await live.runtime.store.job_by_task("acme", TASK_ID)


async def assert_nothing_happened(live: LiveReceiver, calls: Calls) -> None:
    await settle(live)
    assert [] == (await live.runtime.store.list_jobs()).items
    assert [] == calls.events


async def quarantine(live: LiveReceiver) -> list[tuple[str, int]]:
    return [(q.reason, q.status_code) for q in await live.runtime.store.list_quarantine()]


class TestAccepted:
    """Messages the reference library signed are stored and fire handlers."""

    async def test_unknown_task_creates_its_job(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """The first message about a task creates its job; the next ones move it."""
        for body in (running(40), SUCCEEDED):
            answer = await client.post("/hooks/acme", content=body, headers=signed(body))
            assert (200, "applied") == (answer.status_code, answer.json()["disposition"])
        job = await the_job(live)
        assert job is not None
        assert (Status.SUCCEEDED, "https://cdn.acme.test/v.mp4") == (job.status, job.result_url)
        await settle(live)
        assert [(TASK_ID, "running", 0.4), (TASK_ID, "succeeded", 1.0)] == calls.events

    async def test_raw_request_kept_with_the_signature_redacted(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """The stored request has the exact bytes and the id, but not the signature."""
        headers = signed(SUCCEEDED, msg_id="msg_keep")
        await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        job = await the_job(live)
        assert job is not None
        [raw] = await live.runtime.store.list_requests(job.id)
        assert SUCCEEDED == raw.body
        assert ("msg_keep", "[redacted]") == (
            raw.headers["webhook-id"],
            raw.headers["webhook-signature"],
        )

    async def test_both_secrets_work_during_a_rotation(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """Messages signed with the old secret and with the new one are both accepted."""
        old = await client.post(
            "/hooks/acme", content=running(10), headers=signed(running(10), secret=OLD_SECRET)
        )
        new = await client.post("/hooks/acme", content=SUCCEEDED, headers=signed(SUCCEEDED))
        assert (200, 200) == (old.status_code, new.status_code)
        await settle(live)
        assert ["running", "succeeded"] == [status for _, status, _ in calls.events]

    async def test_one_matching_signature_among_several_is_enough(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A sender rotating its own key signs twice; the one we know is enough."""
        stamp = time.time()
        theirs = signed(SUCCEEDED, secret=STRANGER, msg_id="msg_two", at=stamp)
        ours = signed(SUCCEEDED, msg_id="msg_two", at=stamp)
        headers = {
            **ours,
            "webhook-signature": f"{theirs['webhook-signature']} {ours['webhook-signature']}",
        }
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert 200 == answer.status_code

    async def test_a_timestamp_inside_the_tolerance_is_accepted(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A message four minutes old (or ahead) is still within the five-minute window."""
        for offset in (-240, 240):
            body = running(50 + offset // 60)
            headers = signed(body, at=time.time() + offset)
            assert (
                200 == (await client.post("/hooks/acme", content=body, headers=headers)).status_code
            )


class TestDuplicates:
    """A redelivered message (the same webhook-id) is stored and fires nothing, on every store."""

    @pytest.fixture
    async def live(
        self, tmp_path: Path, handlers: Registry, store_url: str
    ) -> AsyncIterator[LiveReceiver]:
        env = {
            "RECEIVER_GENERIC_PROVIDERS": "acme",
            "RECEIVER_ACME_WEBHOOK_SECRET": f"{OLD_SECRET} {NEW_SECRET}",
            "RECEIVER_DATABASE_URL": store_url,
        }
        async with running_receiver(tmp_path, handlers=handlers, env=env) as receiver:
            yield receiver

    async def test_redelivery_fires_once(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """The same message sent three times runs the handler once."""
        headers = signed(SUCCEEDED, msg_id="msg_once")
        answers = [
            await client.post("/hooks/acme", content=SUCCEEDED, headers=headers) for _ in range(3)
        ]
        assert [200] * 3 == [a.status_code for a in answers]
        assert ["applied", "duplicate", "duplicate"] == [a.json()["disposition"] for a in answers]
        await settle(live)
        assert [(TASK_ID, "succeeded", 1.0)] == calls.events

    async def test_the_webhook_id_decides(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """News under a used webhook-id is a duplicate; the same news under a new id is not."""
        first = await client.post(
            "/hooks/acme", content=running(10), headers=signed(running(10), msg_id="msg_a")
        )
        reused = await client.post(
            "/hooks/acme", content=running(60), headers=signed(running(60), msg_id="msg_a")
        )
        fresh = await client.post(
            "/hooks/acme", content=running(60), headers=signed(running(60), msg_id="msg_b")
        )
        assert ["applied", "duplicate", "applied"] == [
            a.json()["disposition"] for a in (first, reused, fresh)
        ]
        await settle(live)
        assert [(TASK_ID, "running", 0.1), (TASK_ID, "running", 0.6)] == calls.events
        job = await the_job(live)
        assert job is not None
        assert 3 == len(await live.runtime.store.list_events(job.id))

    async def test_concurrent_redeliveries_fire_once(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A job that exists, and the same message arriving ten times at once: one handler run."""
        await client.post("/hooks/acme", content=running(5), headers=signed(running(5)))
        headers = signed(SUCCEEDED, msg_id="msg_race")
        answers = await asyncio.gather(
            *(client.post("/hooks/acme", content=SUCCEEDED, headers=headers) for _ in range(10))
        )
        assert [200] * 10 == [a.status_code for a in answers]
        await settle(live)
        assert 1 == sum(1 for _, status, _ in calls.events if status == "succeeded")


class TestRefused:
    """Anything the signature does not prove is 401, quarantined, and fires nothing."""

    async def test_tampered_body(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """One changed word after signing fails."""
        headers = signed(SUCCEEDED)
        tampered = SUCCEEDED.replace(b"completed", b"cancelled")
        answer = await client.post("/hooks/acme", content=tampered, headers=headers)
        assert (401, {"error": "unauthorized"}) == (answer.status_code, answer.json())
        await assert_nothing_happened(live, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert ("bad_signature", 401, "[redacted]") == (
            entry.reason,
            entry.status_code,
            entry.headers["webhook-signature"],
        )

    async def test_reserialized_body(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """The same JSON written without the spaces is not what was signed."""
        headers = signed(SUCCEEDED)
        compact = json.dumps(json.loads(SUCCEEDED), separators=(",", ":")).encode()
        assert json.loads(compact) == json.loads(SUCCEEDED)
        answer = await client.post("/hooks/acme", content=compact, headers=headers)
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)

    async def test_wrong_secret(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A message signed with a secret we do not hold fails."""
        answer = await client.post(
            "/hooks/acme", content=SUCCEEDED, headers=signed(SUCCEEDED, secret=STRANGER)
        )
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)

    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    async def test_missing_header(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls, missing: str
    ) -> None:
        """Each of the three headers is required."""
        headers = signed(SUCCEEDED)
        del headers[missing]
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)
        assert [(f"missing_signature: missing {missing}", 401)] == await quarantine(live)

    @pytest.mark.parametrize("offset", [-301, 301, -86400])
    async def test_timestamp_outside_the_tolerance(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls, offset: int
    ) -> None:
        """A rightly signed message too old or from the future fails: no replays."""
        headers = signed(SUCCEEDED, at=time.time() + offset)
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)

    async def test_another_ids_signature(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A signature made for one webhook-id does not cover another."""
        headers = {**signed(SUCCEEDED, msg_id="msg_real"), "webhook-id": "msg_forged"}
        assert (
            401
            == (await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)).status_code
        )
        await assert_nothing_happened(live, calls)

    @pytest.mark.parametrize("repeated", ["webhook-id", "webhook-timestamp"])
    async def test_repeated_headers_are_refused(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls, repeated: str
    ) -> None:
        """Two values of a signed header are ambiguous: refused, whichever one was signed."""
        headers = signed(SUCCEEDED, msg_id="msg_dup")
        pairs = [*headers.items(), (repeated, headers[repeated])]
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=pairs)
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)

    async def test_a_static_secret_is_not_a_signature(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """The apiframe way (the secret in a header) proves nothing here."""
        headers = {"x-webhook-secret": NEW_SECRET, "content-type": "application/json"}
        assert (
            401
            == (await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)).status_code
        )
        await assert_nothing_happened(live, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert NEW_SECRET not in repr(entry.headers)

    async def test_unknown_name_is_404(self, client: httpx.AsyncClient) -> None:
        """Only declared names have a route."""
        answer = await client.post("/hooks/other", content=SUCCEEDED, headers=signed(SUCCEEDED))
        assert 404 == answer.status_code


def as_svix(headers: dict[str, str]) -> dict[str, str]:
    """The same headers under Svix's names: `svix-id`, `svix-timestamp`, `svix-signature`."""
    return {name.replace("webhook-", "svix-"): value for name, value in headers.items()}


class TestSvixHeaderNames:
    """Svix's own header names are accepted as its library accepts them: one family at a time."""

    async def test_svix_names_are_accepted(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A message signed by the reference library and sent as Svix sends it is stored."""
        headers = as_svix(signed(SUCCEEDED, msg_id="msg_svix"))
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert (200, "applied") == (answer.status_code, answer.json()["disposition"])
        await settle(live)
        assert [(TASK_ID, "succeeded", 1.0)] == calls.events
        job = await the_job(live)
        assert job is not None
        [raw] = await live.runtime.store.list_requests(job.id)
        assert ("msg_svix", "[redacted]") == (raw.headers["svix-id"], raw.headers["svix-signature"])

    async def test_svix_id_is_the_delivery_id(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """A redelivery under Svix's names (same svix-id) is a duplicate and fires nothing."""
        first = as_svix(signed(SUCCEEDED, msg_id="msg_again"))
        again = as_svix(signed(SUCCEEDED, msg_id="msg_again"))
        await client.post("/hooks/acme", content=SUCCEEDED, headers=first)
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=again)
        assert "duplicate" == answer.json()["disposition"]
        await settle(live)
        assert 1 == len(calls.events)

    async def test_complete_svix_family_wins_over_webhook_family(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """Both families present: the svix-* headers are checked, the webhook-* ones ignored."""
        good = as_svix(signed(SUCCEEDED))
        forged = signed(SUCCEEDED, secret=STRANGER)
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers={**forged, **good})
        assert 200 == answer.status_code
        bad = as_svix(signed(SUCCEEDED, secret=STRANGER))
        refused = await client.post(
            "/hooks/acme", content=running(20), headers={**signed(running(20)), **bad}
        )
        assert 401 == refused.status_code
        assert [("bad_signature", 401)] == await quarantine(live)

    async def test_incomplete_svix_family_falls_back_to_webhook_family(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A stray svix-id beside three good webhook-* headers does not spoil them."""
        headers = {**signed(SUCCEEDED), "svix-id": "msg_stray"}
        assert (
            200
            == (await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)).status_code
        )

    async def test_families_are_never_mixed(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """svix-id with webhook-timestamp and webhook-signature is not a complete family."""
        headers = signed(SUCCEEDED, msg_id="msg_mix")
        headers["svix-id"] = headers.pop("webhook-id")
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert 401 == answer.status_code
        await assert_nothing_happened(live, calls)
        assert [
            ("missing_signature: missing svix-timestamp, svix-signature", 401)
        ] == await quarantine(live)


class TestRefusalReasons:
    """The quarantine tells a missing header, a skewed clock and a wrong secret apart."""

    @pytest.mark.parametrize(
        ("offset", "reason", "side"),
        [(-400, "stale_signature", "behind"), (3600, "future_signature", "ahead of")],
    )
    async def test_skew_is_recorded(
        self, live: LiveReceiver, client: httpx.AsyncClient, offset: int, reason: str, side: str
    ) -> None:
        """A rightly signed message outside the tolerance says which way, and by how much."""
        headers = signed(SUCCEEDED, at=time.time() + offset)
        answer = await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert (401, {"error": "unauthorized"}) == (answer.status_code, answer.json())
        [(kept, status)] = await quarantine(live)
        found = re.fullmatch(
            rf"{reason}: timestamp (\d+) s {side} this clock \(tolerance 300 s\)", kept
        )
        assert found is not None, kept
        # Signed at a whole second, read a moment later: within a second or two of the offset.
        assert abs(int(found.group(1)) - abs(offset)) <= 2
        assert 401 == status

    async def test_wrong_secret_is_bad_signature(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A fresh message signed with a secret we do not hold is a bad signature, not a clock."""
        headers = as_svix(signed(SUCCEEDED, secret=STRANGER))
        await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert [("bad_signature", 401)] == await quarantine(live)

    async def test_timestamp_not_unix_seconds(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """A timestamp in another form is named as such."""
        headers = {**signed(SUCCEEDED), "webhook-timestamp": "2026-12-07T15:00:00Z"}
        await client.post("/hooks/acme", content=SUCCEEDED, headers=headers)
        assert [("bad_timestamp", 401)] == await quarantine(live)


class TestBadPayloads:
    """A genuine message the receiver cannot read is a 400, kept whole for diagnosis."""

    @pytest.mark.parametrize(
        "body",
        [
            b'{"type": "video.updated", "data": {"id": "vid_1"}}',  # no status
            b'{"type": "video.updated", "data": {"status": "done"}}',  # no task id
            b'{"type": "video.succeeded", "data": {"id": "../../etc/passwd"}}',
            b"[1, 2, 3]",
            b"not json",
        ],
    )
    async def test_signed_but_unusable(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls, body: bytes
    ) -> None:
        """400, nothing recorded, the body kept in the quarantine."""
        answer = await client.post("/hooks/acme", content=body, headers=signed(body))
        assert 400 == answer.status_code
        await assert_nothing_happened(live, calls)
        [entry] = await live.runtime.store.list_quarantine()
        assert (400, body) == (entry.status_code, entry.body)


class TestJobUrl:
    """A job's own URL under a generic provider also needs the signature."""

    async def make_job(self, live: LiveReceiver) -> Job:
        at = now()
        job = Job(
            id=new_id("job"),
            provider="acme",
            task_id=TASK_ID,
            status=Status.QUEUED,
            created_at=at,
            updated_at=at,
        )
        await live.runtime.store.create_job(NewJob(job=job, token_hash=digest(TOKEN)))
        return job

    async def test_signed_message_on_the_job_url(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """With the token and a signature, the message moves the job."""
        job = await self.make_job(live)
        answer = await client.post(
            f"/hooks/acme/{TOKEN}", content=SUCCEEDED, headers=signed(SUCCEEDED)
        )
        assert 200 == answer.status_code
        stored = await live.runtime.store.get_job(job.id)
        assert stored is not None and Status.SUCCEEDED == stored.status

    async def test_token_alone_is_not_enough(
        self, live: LiveReceiver, client: httpx.AsyncClient, calls: Calls
    ) -> None:
        """Without a valid signature the token proves nothing."""
        job = await self.make_job(live)
        headers = {"content-type": "application/json"}
        answer = await client.post(f"/hooks/acme/{TOKEN}", content=SUCCEEDED, headers=headers)
        assert 401 == answer.status_code
        await settle(live)
        assert [] == await live.runtime.store.list_events(job.id)
        assert [] == calls.events


class TestStatusApi:
    """A generic provider with a status API is polled at its configured base URL."""

    async def test_poll_completes_a_job_whose_callback_was_lost(
        self, tmp_path: Path, handlers: Registry, calls: Calls
    ) -> None:
        """A job whose next callback is overdue is finished by GET /v1/jobs/{task_id}."""
        asked: list[tuple[str, str | None]] = []

        @get("/v1/jobs/{task_id:str}")
        async def status(request: Request[Any, Any, Any], task_id: FromPath[str]) -> dict[str, Any]:
            asked.append((task_id, request.headers.get("authorization")))
            return {"data": {"id": task_id, "status": "succeeded", "url": "https://c/v.mp4"}}

        async with serve_in_loop(Litestar([status])) as status_url:
            env = {
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": NEW_SECRET,
                "RECEIVER_ACME_BASE_URL": status_url,
                "RECEIVER_ACME_STATUS_PATH": "/v1/jobs/{task_id}",
                "RECEIVER_ACME_API_KEY": "acme-key",
                "RECEIVER_ACME_DEADLINE": "0.3",  # the callback after "running" is overdue
            }
            async with (
                running_receiver(tmp_path, handlers=handlers, env=env) as live,
                httpx.AsyncClient(base_url=live.url, timeout=10) as client,
            ):
                body = running(30)
                answer = await client.post("/hooks/acme", content=body, headers=signed(body))
                assert 200 == answer.status_code
                job = await the_job(live)
                assert job is not None
                for _ in range(500):
                    stored = await live.runtime.store.get_job(job.id)
                    if stored is not None and stored.status.terminal:
                        break
                    await asyncio.sleep(0.02)
                assert stored is not None
                assert (Status.SUCCEEDED, "https://c/v.mp4") == (stored.status, stored.result_url)
                await settle(live)
        assert [(TASK_ID, "Bearer acme-key")] == asked
        assert [(TASK_ID, "running", 0.3), (TASK_ID, "succeeded", 1.0)] == calls.events


class TestForgeriesAreRateLimited:
    """Bad signatures count as failed authentication: a burst of them is answered 429."""

    async def test_burst_of_forgeries(
        self, tmp_path: Path, handlers: Registry, calls: Calls
    ) -> None:
        """After the burst, the address is refused before any work."""
        env = {
            "RECEIVER_GENERIC_PROVIDERS": "acme",
            "RECEIVER_ACME_WEBHOOK_SECRET": NEW_SECRET,
            "RECEIVER_AUTH_FAILURE_BURST": "3",
            "RECEIVER_AUTH_FAILURE_RATE": "0.01",
        }
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as live,
            httpx.AsyncClient(base_url=live.url, timeout=10) as client,
        ):
            forged = signed(SUCCEEDED, secret=STRANGER)
            codes = [
                (await client.post("/hooks/acme", content=SUCCEEDED, headers=forged)).status_code
                for _ in range(5)
            ]
            assert [401, 401, 401, 429, 429] == codes
            await assert_nothing_happened(live, calls)
