"""The provider simulator over real HTTP: each provider's answers and callbacks, quirks included."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import pytest_asyncio

from receiver.asgi import Receive, Scope, Send
from receiver.errors import ProviderError
from receiver.models import Status
from receiver.providers import get_provider
from receiver.providers.apiframe import Apiframe
from receiver.providers.base import ProviderGateway, ProviderSettings
from receiver.providers.rixapi import Rixapi
from receiver.serving import serve_in_loop
from receiver.simulator import (
    PROVIDERS,
    RunningSimulator,
    SimConfig,
    create_simulator,
    run_simulator,
)

KEY = "sim-key"
# Each provider's way of presenting the key.
AUTH = {
    "apiframe": {"authorization": KEY},
    "rixapi": {"authorization": f"Bearer {KEY}"},
    "aivideoapi": {"authorization": KEY},
    "artvisum": {"x-api-key": KEY},
    "runway_ai": {"authorization": f"Bearer {KEY}"},
}

# Each provider's main create path.
CREATE_PATH = {
    "apiframe": "/runway-imagine",
    "rixapi": "/runway/pro/generate",
    "aivideoapi": "/runway/generate/text",
    "artvisum": "/runway/text",
    "runway_ai": "/v1/generate-video",
}


# Where each provider's error body says what went wrong, in its own style.
ERROR_OF: list[tuple[str, Callable[[Any], Any]]] = [
    ("apiframe", lambda body: body["message"]),
    ("rixapi", lambda body: (body["code"], body["msg"])),
    ("aivideoapi", lambda body: body["message"]),
    ("artvisum", lambda body: (body["status"], body["message"])),
    ("runway_ai", lambda body: body["error"]),
]


class Hit(NamedTuple):
    """One request the receiver stub got."""

    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ReceiverStub:
    """A raw ASGI app in place of the receiver: it records requests and answers `status_code`."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.status_code = 200
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.hits.append(Hit(scope["method"], scope["path"], scope["query_string"], headers, body))
        await send({"type": "http.response.start", "status": self.status_code, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served_receiver() -> AsyncIterator[ReceiverStub]:
    """One receiver stub served over HTTP for the module."""
    stub = ReceiverStub()
    async with serve_in_loop(stub) as url:
        stub.url = url
        yield stub


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served_simulator() -> AsyncIterator[RunningSimulator]:
    """One simulator served over HTTP for the module."""
    async with run_simulator() as running:
        yield running


@pytest.fixture
def receiver(served_receiver: ReceiverStub) -> ReceiverStub:
    """The receiver stub, with nothing recorded and answering 200."""
    served_receiver.hits.clear()
    served_receiver.status_code = 200
    return served_receiver


@pytest_asyncio.fixture(loop_scope="module")
async def sim(served_simulator: RunningSimulator) -> RunningSimulator:
    """The simulator without tasks, configured afresh with short steps."""
    await served_simulator.reset(SimConfig(step_delay=0.01))
    return served_simulator


@pytest_asyncio.fixture(loop_scope="module")
async def http(sim: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the simulator's own URL."""
    async with httpx.AsyncClient(base_url=sim.url) as client:
        yield client


async def call(
    http: httpx.AsyncClient, provider: str, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Call one simulated provider with its correct key."""
    return await http.request(method, f"/{provider}{path}", headers=AUTH[provider], **kwargs)


async def create_apiframe(http: httpx.AsyncClient, hook: str, secret: str = "s3") -> str:
    body = {"prompt": "mech", "generation_type": "text2video", "webhook_url": hook}
    answer = await call(
        http, "apiframe", "POST", "/runway-imagine", json=body | {"webhook_secret": secret}
    )
    assert 200 == answer.status_code
    return str(answer.json()["task_id"])


async def create_rixapi(http: httpx.AsyncClient, hook: str) -> str:
    body = {"prompt": "cat", "model": "gen3", "callback_url": hook}
    answer = await call(http, "rixapi", "POST", "/runway/pro/generate", json=body)
    assert 200 == answer.status_code
    return str(answer.json()["data"]["task_id"])


async def create_aivideoapi(http: httpx.AsyncClient, hook: str) -> str:
    body = {"text_prompt": "Space travel", "callback_url": hook}
    answer = await call(http, "aivideoapi", "POST", "/runway/generate/text", json=body)
    assert 200 == answer.status_code
    return str(answer.json()["uuid"])


class TestApiframe:
    """apiframe posts progress and the result to webhook_url with the secret in a header."""

    async def test_callbacks(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """A progress post with the string "40", then the result with the number 100."""
        task_id = await create_apiframe(http, receiver.url + "/hooks/apiframe/tok")
        await sim.wait_idle()
        assert ["POST", "POST"] == [hit.method for hit in receiver.hits]
        assert ["s3", "s3"] == [hit.headers["x-webhook-secret"] for hit in receiver.hits]
        assert "/hooks/apiframe/tok" == receiver.hits[0].path
        progress, final = (hit.json() for hit in receiver.hits)
        assert {
            "task_id": task_id,
            "task_type": "runway",
            "status": "processing",
            "percentage": "40",
        } == progress
        assert "finished" == final["status"]
        assert 100 == final["percentage"]
        assert final["video_url"].startswith(f"{sim.url}/_sim/media/")

    async def test_adapter_reads_callbacks(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """The apiframe adapter reads what the simulator sends."""
        await create_apiframe(http, receiver.url + "/hook")
        await sim.wait_idle()
        updates = [Apiframe().parse_callback(hit.json()) for hit in receiver.hits]
        assert [(Status.RUNNING, 0.4), (Status.SUCCEEDED, 1.0)] == [
            (update.status, update.progress) for update in updates
        ]

    async def test_no_secret_no_header(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """Without a webhook_secret no x-webhook-secret header is sent."""
        await create_apiframe(http, receiver.url + "/hook", secret="")
        await sim.wait_idle()
        assert [False, False] == ["x-webhook-secret" in hit.headers for hit in receiver.hits]

    async def test_fetch(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """/fetch answers the current state and /fetch-many takes 2 to 20 ids."""
        first = await create_apiframe(http, "")
        second = await create_apiframe(http, "")
        await sim.wait_idle()
        done = await call(http, "apiframe", "POST", "/fetch", json={"task_id": first})
        assert "finished" == done.json()["status"]
        many = await call(
            http, "apiframe", "POST", "/fetch-many", json={"task_ids": [first, second]}
        )
        assert [first, second] == [task["task_id"] for task in many.json()["tasks"]]
        one = await call(http, "apiframe", "POST", "/fetch-many", json={"task_ids": [first]})
        assert 400 == one.status_code
        missing = await call(http, "apiframe", "POST", "/fetch", json={"task_id": "nope"})
        assert 404 == missing.status_code

    async def test_failed(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `fail`, the last post is status "failed" with a message."""
        sim.config.fail = True
        await create_apiframe(http, receiver.url + "/hook")
        await sim.wait_idle()
        final = receiver.hits[-1].json()
        assert "failed" == final["status"]
        assert final["message"]
        assert Status.FAILED == Apiframe().parse_callback(final).status


class TestRixapi:
    """rixapi posts the bare data object, every value a string, on every status change."""

    async def test_bare_string_callbacks(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """Status "1" then "3" with video, poster, last frame and Unix times, all strings."""
        task_id = await create_rixapi(http, receiver.url + "/hooks/rixapi/tok")
        await sim.wait_idle()
        running, final = (hit.json() for hit in receiver.hits)
        assert ("1", "3") == (running["status"], final["status"])
        assert task_id == final["task_id"]
        assert all(isinstance(value, str) for value in final.values())
        assert final["create_time"].isdigit()
        assert final["update_time"].isdigit()
        assert final["video_url"].startswith(f"{sim.url}/_sim/media/")
        assert final["poster"].endswith(".jpg")
        assert final["last_frame"].endswith(".jpg")
        assert "" == running["video_url"]
        assert "x-webhook-secret" not in receiver.hits[0].headers

    async def test_wrapped(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `wrapped`, callbacks come as {code, msg, data}, which the adapter also reads."""
        sim.config.wrapped = True
        await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        final = receiver.hits[-1].json()
        assert 200 == final["code"]
        assert "3" == final["data"]["status"]
        update = Rixapi().parse_callback(final)
        assert Status.SUCCEEDED == update.status
        assert final["data"]["video_url"] == update.result_url

    async def test_failed(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `fail`, the last post is status "2" with a msg and refund "1"."""
        sim.config.fail = True
        await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        final = receiver.hits[-1].json()
        assert ("2", "1") == (final["status"], final["refund"])
        assert final["msg"]

    async def test_feed(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """/runway/feed answers wrapped; an unknown task has a code other than 200."""
        sim.config.lose = True
        task_id = await create_rixapi(http, "http://127.0.0.1:9/unused")
        await sim.wait_idle()
        done = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": task_id})
        assert (200, "3") == (done.json()["code"], done.json()["data"]["status"])
        missing = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": "nope"})
        assert 404 == missing.json()["code"]

    async def test_callback_url_required(self, http: httpx.AsyncClient) -> None:
        """callback_url is required, as documented."""
        answer = await call(http, "rixapi", "POST", "/runway/pro/generate", json={"prompt": "cat"})
        assert (400, 400) == (answer.status_code, answer.json()["code"])
        assert "callback_url" in answer.json()["msg"]


class TestAivideoapi:
    """aivideoapi sends one bodiless GET at the end, glued on with plain concatenation."""

    async def test_single_nudge_double_question_mark(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """A callback_url with a query gets a second "?" before uuid."""
        uuid = await create_aivideoapi(http, receiver.url + "/hooks/aivideoapi/tok?src=sim")
        await sim.wait_idle()
        (hit,) = receiver.hits
        assert ("GET", "/hooks/aivideoapi/tok") == (hit.method, hit.path)
        assert f"src=sim?uuid={uuid}".encode() == hit.query
        assert b"" == hit.body

    async def test_status(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """/status?uuid= ends at `success` with its media; an unknown uuid is a 404."""
        uuid = await create_aivideoapi(http, "")
        await sim.wait_idle()
        done = (await call(http, "aivideoapi", "GET", "/status", params={"uuid": uuid})).json()
        assert (uuid, "success") == (done["uuid"], done["status"])
        assert done["url"].endswith(".mp4")
        assert done["gif_url"].endswith(".gif")
        missing = await call(http, "aivideoapi", "GET", "/status", params={"uuid": "nope"})
        assert 404 == missing.status_code

    async def test_failed_still_nudges(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """A failed job nudges too, and /status says `failed`."""
        sim.config.fail = True
        uuid = await create_aivideoapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        assert 1 == len(receiver.hits)
        answer = await call(http, "aivideoapi", "GET", "/status", params={"uuid": uuid})
        assert "failed" == answer.json()["status"]

    async def test_late_adds_no_nudge(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """A nudge carries no progress, so `late` adds nothing to aivideoapi."""
        sim.config.late = True
        await create_aivideoapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        assert 1 == len(receiver.hits)


class TestArtvisum:
    """artvisum never calls back; /status/{uuid} shows progress and then `completed`."""

    async def test_polling(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """A text job ends completed with its url and preview_url, without any callback."""
        answer = await call(http, "artvisum", "POST", "/runway/text", json={"prompt": "smoke"})
        assert ("success", "Task created successfully") == (
            answer.json()["status"],
            answer.json()["message"],
        )
        uuid = answer.json()["data"]["uuid"]
        await sim.wait_idle()
        done = (await call(http, "artvisum", "GET", f"/status/{uuid}")).json()
        assert ("completed", 100) == (done["data"]["status"], done["data"]["progress"])
        assert done["data"]["url"].endswith(".mp4")
        assert done["data"]["preview_url"].endswith(".gif")
        assert [] == sim.tasks()[0].callbacks

    @pytest.mark.parametrize(
        ("path", "files", "status_code", "message"),
        [
            (
                "/runway/image",
                {"image": ("a.png", b"png", "image/png")},
                200,
                "Task created successfully",
            ),
            (
                "/runway/image",
                {"image": ("a.png", b"0" * (10 * 1024 * 1024), "image/png")},
                400,
                "less than 10MB",
            ),
            (
                "/runway/video",
                {"video": ("a.mov", b"mov", "video/quicktime")},
                200,
                "Task created successfully",
            ),
            (
                "/runway/extend",
                {"video": ("a.mkv", b"mkv", "video/x-matroska")},
                400,
                "MP4, MOV, AVI",
            ),
            (
                "/runway/image-desc",
                {"image": ("a.png", b"png", "image/png")},
                400,
                "prompt is required",
            ),
            (
                "/runway/video",
                {"image": ("a.png", b"png", "image/png")},
                400,
                "video file is required",
            ),
        ],
    )
    async def test_uploads(
        self,
        http: httpx.AsyncClient,
        path: str,
        files: dict[str, tuple[str, bytes, str]],
        status_code: int,
        message: str,
    ) -> None:
        """Uploads are multipart and checked against the documented limits."""
        answer = await call(http, "artvisum", "POST", path, files=files)
        assert status_code == answer.status_code
        assert message in answer.json()["message"]

    async def test_unknown_uuid(self, http: httpx.AsyncClient) -> None:
        """An unknown uuid answers an outer status of "error"."""
        answer = await call(http, "artvisum", "GET", "/status/nope")
        assert (404, "error") == (answer.status_code, answer.json()["status"])


class TestRunwayAi:
    """runway_ai answers synchronously with the media URL itself."""

    async def test_media_url_served(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """generate-video answers a video_url that the simulator serves."""
        body = {"prompt": "waves", "duration": 5}
        answer = await call(http, "runway_ai", "POST", "/v1/generate-video", json=body)
        video_url = answer.json()["video_url"]
        assert video_url.startswith(f"{sim.url}/_sim/media/")
        media = await http.get(video_url)
        assert (200, "video/mp4") == (media.status_code, media.headers["content-type"])
        assert b"ftyp" == media.content[4:8]
        (task,) = sim.tasks()
        assert (Status.SUCCEEDED.value, video_url) == (task.status, task.result_url)

    async def test_metadata_and_delete(self, http: httpx.AsyncClient) -> None:
        """The metadata endpoint is a GET and delete-media a DELETE, with query parameters."""
        metadata = await call(
            http, "runway_ai", "GET", "/v1/image-metadata", params={"image_url": "https://i/1.jpg"}
        )
        assert {"image_id", "size", "width", "height", "created_at"} == set(metadata.json())
        deleted = await call(
            http,
            "runway_ai",
            "DELETE",
            "/v1/delete-media",
            params={"media_url": "m", "auth_token": "t"},
        )
        assert {"message": "Media successfully deleted"} == deleted.json()

    @pytest.mark.parametrize(
        ("method", "path", "body", "status_code"),
        [
            ("GET", "/v1/generate-video", None, 405),
            ("POST", "/v1/generate-video", {"prompt": "waves"}, 400),
            ("POST", "/v1/upscale", {}, 404),
        ],
    )
    async def test_refusals(
        self, http: httpx.AsyncClient, method: str, path: str, body: Any, status_code: int
    ) -> None:
        """A wrong method, a missing parameter and an unknown endpoint are refused."""
        answer = await call(http, "runway_ai", method, path, json=body)
        assert status_code == answer.status_code
        assert answer.json()["error"]

    async def test_failed(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """With `fail`, the call itself answers 422 with an error."""
        sim.config.fail = True
        body = {"prompt": "waves", "duration": 5}
        answer = await call(http, "runway_ai", "POST", "/v1/generate-video", json=body)
        assert 422 == answer.status_code
        assert "failed" in answer.json()["error"]


class TestQueued:
    """Before its first step a job is queued, in each provider's own words."""

    @pytest.fixture(autouse=True)
    def slow(self, sim: RunningSimulator) -> None:
        """Steps long enough that no job leaves the queue during the test."""
        sim.config.step_delay = 60

    async def test_apiframe(self, http: httpx.AsyncClient) -> None:
        """apiframe's fetch says "processing" at "0"."""
        task_id = await create_apiframe(http, "")
        answer = (await call(http, "apiframe", "POST", "/fetch", json={"task_id": task_id})).json()
        assert ("processing", "0") == (answer["status"], answer["percentage"])

    async def test_rixapi(self, http: httpx.AsyncClient) -> None:
        """rixapi's feed says status "0"."""
        task_id = await create_rixapi(http, "http://127.0.0.1:9/unused")
        answer = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": task_id})
        assert (200, "0") == (answer.json()["code"], answer.json()["data"]["status"])

    async def test_aivideoapi(self, http: httpx.AsyncClient) -> None:
        """aivideoapi's status says `in queue` with a null progress."""
        uuid = await create_aivideoapi(http, "")
        answer = await call(http, "aivideoapi", "GET", "/status", params={"uuid": uuid})
        assert ("in queue", None) == (answer.json()["status"], answer.json()["progress"])

    async def test_artvisum(self, http: httpx.AsyncClient) -> None:
        """artvisum's status says `pending` at 0, inside a successful API answer."""
        created = await call(http, "artvisum", "POST", "/runway/text", json={"prompt": "p"})
        uuid = created.json()["data"]["uuid"]
        answer = (await call(http, "artvisum", "GET", f"/status/{uuid}")).json()
        assert ("success", "pending", 0) == (
            answer["status"],
            answer["data"]["status"],
            answer["data"]["progress"],
        )


class TestMisbehaviour:
    """The config makes the providers misbehave the ways a receiver must survive."""

    async def test_duplicate(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `duplicate`, every callback is sent twice."""
        sim.config.duplicate = True
        await create_apiframe(http, receiver.url + "/hook")
        await sim.wait_idle()
        bodies = [hit.body for hit in receiver.hits]
        assert 4 == len(bodies)
        assert (bodies[0], bodies[2]) == (bodies[1], bodies[3])

    async def test_late(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `late`, a progress callback follows the final one."""
        sim.config.late = True
        await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        assert ["1", "3", "1"] == [hit.json()["status"] for hit in receiver.hits]

    async def test_lose(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `lose`, nothing calls back, yet the status API has the final state."""
        sim.config.lose = True
        task_id = await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        assert [] == receiver.hits
        feed = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": task_id})
        assert "3" == feed.json()["data"]["status"]

    async def test_create_delay_calls_back_before_the_answer(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `create_delay`, the task's final callback reaches the receiver before its id."""
        sim.config.create_delay = 0.5
        task_id = await create_rixapi(http, receiver.url + "/hook")
        assert ["1", "3"] == [hit.json()["status"] for hit in receiver.hits]
        assert task_id == receiver.hits[-1].json()["task_id"]

    async def test_no_preview(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `no_preview`, a success carries its video and neither poster nor last frame."""
        sim.config.no_preview = True
        task_id = await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        feed = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": task_id})
        data = feed.json()["data"]
        assert ("3", "", "") == (data["status"], data["poster"], data["last_frame"])
        assert data["video_url"].startswith(f"{sim.url}/_sim/media/")

    async def test_expired_results_are_renewed_by_the_status_api(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `expire_results`, the first URLs answer `expire_status`; once one has been
        refused, the status API hands out fresh ones that work (and only then)."""
        sim.config.expire_results = 1
        sim.config.expire_status = 403
        task_id = await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()

        async def feed() -> dict[str, str]:
            answer = await call(http, "rixapi", "POST", "/runway/feed", json={"task_id": task_id})
            data: dict[str, str] = answer.json()["data"]
            return data

        first = await feed()
        assert first["video_url"] == receiver.hits[-1].json()["video_url"]
        assert first == await feed()  # nothing refused yet: the same links
        assert 403 == (await http.get(first["video_url"])).status_code
        renewed = await feed()
        assert first["video_url"] != renewed["video_url"]
        assert first["poster"] != renewed["poster"]
        assert 200 == (await http.get(renewed["video_url"])).status_code
        assert 200 == (await http.get(renewed["poster"])).status_code
        assert 403 == (await http.get(first["poster"])).status_code
        assert renewed == await feed()

    async def test_results_can_stay_expired_after_a_renewal(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """With `expire_results` 2, the first renewed link is expired too; the next is not."""
        sim.config.expire_results = 2
        task_id = await create_apiframe(http, receiver.url + "/hook")
        await sim.wait_idle()
        links = [receiver.hits[-1].json()["video_url"]]
        answers = []
        for _ in range(2):
            answers.append((await http.get(links[-1])).status_code)
            fetched = await call(http, "apiframe", "POST", "/fetch", json={"task_id": task_id})
            links.append(fetched.json()["video_url"])
        answers.append((await http.get(links[-1])).status_code)
        assert [410, 410, 200] == answers
        assert 3 == len(set(links))

    @pytest.mark.parametrize(("provider", "error_of"), ERROR_OF)
    async def test_create_error(
        self,
        sim: RunningSimulator,
        http: httpx.AsyncClient,
        provider: str,
        error_of: Callable[[Any], Any],
    ) -> None:
        """With `create_error`, create calls answer that status with a provider-style body."""
        sim.config.create_error = 503
        answer = await call(http, provider, "POST", CREATE_PATH[provider], json={})
        assert 503 == answer.status_code
        assert error_of(answer.json())
        assert [] == sim.tasks()

    @pytest.mark.parametrize("provider", PROVIDERS)
    async def test_create_error_times_and_retry_after(
        self, sim: RunningSimulator, http: httpx.AsyncClient, provider: str
    ) -> None:
        """`create_error_times` refuses only that many creates, with `create_retry_after` as
        Retry-After, and every create call is counted, refused or not."""
        sim.config.create_error = 429
        sim.config.create_retry_after = 7
        sim.config.create_error_times = 2
        answers = [
            await call(http, provider, "POST", CREATE_PATH[provider], json={}) for _ in range(3)
        ]
        assert [(429, "7"), (429, "7")] == [
            (answer.status_code, answer.headers.get("retry-after")) for answer in answers[:2]
        ]
        assert 429 != answers[2].status_code  # the body is wrong, but it is no longer refused
        assert (None, None, 3) == (
            sim.config.create_error,
            sim.config.create_error_times,
            sim.create_calls(provider),
        )

    @pytest.mark.parametrize(("provider", "error_of"), ERROR_OF)
    async def test_wrong_key(
        self,
        sim: RunningSimulator,
        http: httpx.AsyncClient,
        provider: str,
        error_of: Callable[[Any], Any],
    ) -> None:
        """A configured key refuses a wrong one with 401 in the provider's style."""
        sim.config.api_keys = {provider: "right"}
        name, value = next(iter(AUTH[provider].items()))
        path = f"/{provider}{CREATE_PATH[provider]}"
        wrong = await http.post(path, headers={name: value.replace(KEY, "wrong")}, json={})
        assert 401 == wrong.status_code
        assert error_of(wrong.json())

    @pytest.mark.parametrize("provider", PROVIDERS)
    async def test_missing_key(self, http: httpx.AsyncClient, provider: str) -> None:
        """Without a configured key any non-empty one passes, but no key is always refused."""
        missing = await http.post(f"/{provider}{CREATE_PATH[provider]}", json={})
        assert 401 == missing.status_code
        anything = await call(http, provider, "POST", CREATE_PATH[provider], json={})
        assert 400 == anything.status_code

    @pytest.mark.parametrize("provider", PROVIDERS)
    async def test_right_key(
        self, sim: RunningSimulator, http: httpx.AsyncClient, provider: str
    ) -> None:
        """The configured key, presented the provider's way, passes to validation."""
        sim.config.api_keys = {provider: KEY}
        answer = await call(http, provider, "POST", CREATE_PATH[provider], json={})
        assert 400 == answer.status_code

    async def test_bearer_scheme_required(
        self, sim: RunningSimulator, http: httpx.AsyncClient
    ) -> None:
        """rixapi wants "Bearer <key>": the bare key is refused."""
        sim.config.api_keys = {"rixapi": KEY}
        answer = await http.post("/rixapi/runway/feed", headers={"authorization": KEY}, json={})
        assert (401, 401) == (answer.status_code, answer.json()["code"])

    async def test_receiver_answers_recorded(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """The receiver's answer codes are recorded per callback, and nothing is retried."""
        receiver.status_code = 503
        await create_rixapi(http, receiver.url + "/hook")
        await sim.wait_idle()
        (task,) = sim.tasks()
        assert [503, 503] == [callback.status_code for callback in task.callbacks]
        assert 2 == len(receiver.hits)

    async def test_unreachable_receiver(
        self, sim: RunningSimulator, http: httpx.AsyncClient
    ) -> None:
        """A receiver that cannot be reached is recorded as an error without a status."""
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        await create_rixapi(http, f"http://127.0.0.1:{port}/hook")
        await sim.wait_idle()
        (task,) = sim.tasks()
        assert [None, None] == [callback.status_code for callback in task.callbacks]
        assert all(callback.error for callback in task.callbacks)


class TestControl:
    """/_sim steers the simulator and shows its tasks."""

    async def test_partial_update(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        """POST /_sim/config changes only the given fields, in the live config."""
        answer = await http.post("/_sim/config", json={"fail": True, "create_error": 429})
        assert 200 == answer.status_code
        assert (True, 429, 0.01) == (
            sim.config.fail,
            sim.config.create_error,
            sim.config.step_delay,
        )
        assert sim.config is sim.app.state.sim
        assert answer.json() == (await http.get("/_sim/config")).json()

    @pytest.mark.parametrize(
        "patch", [{"step_delay": -1}, {"create_error": 200}, {"fial": True}, {"fail": "yes"}]
    )
    async def test_bad_update(
        self, sim: RunningSimulator, http: httpx.AsyncClient, patch: Any
    ) -> None:
        """A bad field or value is refused with 400 and changes nothing."""
        before = (await http.get("/_sim/config")).json()
        answer = await http.post("/_sim/config", json=patch | {"duplicate": True})
        assert 400 == answer.status_code
        assert before == (await http.get("/_sim/config")).json()

    async def test_tasks(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """GET /_sim/tasks lists provider, task id, status, callback URL and callbacks sent."""
        hook = receiver.url + "/hook"
        task_id = await create_rixapi(http, hook)
        await sim.wait_idle()
        (task,) = (await http.get("/_sim/tasks")).json()
        assert ("rixapi", task_id, "succeeded", hook) == (
            task["provider"],
            task["task_id"],
            task["status"],
            task["callback_url"],
        )
        assert [("POST", 200), ("POST", 200)] == [
            (callback["method"], callback["status_code"]) for callback in task["callbacks"]
        ]

    async def test_config_snapshot(
        self, sim: RunningSimulator, http: httpx.AsyncClient, receiver: ReceiverStub
    ) -> None:
        """A task follows the config it was created under."""
        sim.config.step_delay = 0.2
        await create_rixapi(http, receiver.url + "/hook")
        sim.config.fail = True
        await sim.wait_idle()
        assert "3" == receiver.hits[-1].json()["status"]

    async def test_base_url(self, sim: RunningSimulator) -> None:
        """Each provider's base URL is the simulator URL plus its name."""
        assert f"{sim.url}/artvisum" == sim.base_url("artvisum")
        with pytest.raises(ValueError):
            sim.base_url("runway")


class TestShutdown:
    """Stopping the simulator cancels what is still running."""

    async def test_cancels_pending_tasks(self, receiver: ReceiverStub) -> None:
        """Leaving run_simulator with a job mid-way returns promptly and sends nothing more."""
        started = time.monotonic()
        async with (
            run_simulator(SimConfig(step_delay=30)) as running,
            httpx.AsyncClient(base_url=running.url) as http,
        ):
            await create_rixapi(http, receiver.url + "/hook")
        assert time.monotonic() - started < 5
        await asyncio.sleep(0.05)
        assert [] == receiver.hits

    async def test_app_state(self) -> None:
        """create_simulator exposes the live config as app.state.sim."""
        config = SimConfig(fail=True)
        app = create_simulator(config)
        assert config is app.state.sim


class TestAdapters:
    """Each adapter, driven through ProviderGateway, completes a job against the simulator."""

    @pytest.mark.parametrize(
        ("provider", "fields"),
        [
            ("apiframe", {"prompt": "mech"}),
            ("rixapi", {"prompt": "cat", "model": "gen3"}),
            ("aivideoapi", {"text_prompt": "Space travel"}),
            ("artvisum", {"prompt": "smoke"}),
        ],
    )
    async def test_create_then_pull(
        self,
        sim: RunningSimulator,
        receiver: ReceiverStub,
        provider: str,
        fields: dict[str, Any],
    ) -> None:
        """Create, wait, pull: the job has succeeded with a simulator media URL."""
        settings = ProviderSettings(base_url=sim.base_url(provider), api_key=KEY)
        async with httpx.AsyncClient() as client:
            gateway = ProviderGateway(get_provider(provider), settings, client)
            created = await gateway.create(
                fields, hook_url=receiver.url + "/hook", webhook_secret="s3"
            )
            assert created.task_id is not None
            await sim.wait_idle()
            update = await gateway.pull(created.task_id)
        assert Status.SUCCEEDED == update.status
        assert update.result_url is not None
        assert update.result_url.startswith(f"{sim.url}/_sim/media/")

    async def test_artvisum_upload(self, sim: RunningSimulator, tmp_path: Path) -> None:
        """The artvisum adapter's multipart upload is accepted by the simulator."""
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
        settings = ProviderSettings(base_url=sim.base_url("artvisum"), api_key=KEY)
        async with httpx.AsyncClient() as client:
            gateway = ProviderGateway(get_provider("artvisum"), settings, client)
            created = await gateway.create(
                {"video": str(video)}, hook_url=None, webhook_secret=None
            )
        assert created.task_id is not None

    async def test_runway_ai_sync(self, sim: RunningSimulator) -> None:
        """The runway_ai adapter gets a finished job from the create call itself."""
        settings = ProviderSettings(base_url=sim.base_url("runway_ai"), api_key=KEY)
        async with httpx.AsyncClient() as client:
            gateway = ProviderGateway(get_provider("runway_ai"), settings, client)
            created = await gateway.create(
                {"endpoint": "extract-audio", "video_url": "https://v/1.mp4"},
                hook_url=None,
                webhook_secret=None,
            )
        assert created.update is not None
        assert Status.SUCCEEDED == created.update.status
        assert str(created.update.result_url).endswith(".mp3")

    async def test_create_error_reaches_adapter(self, sim: RunningSimulator) -> None:
        """A simulated 503 is a retryable ProviderError with the provider's message."""
        sim.config.create_error = 503
        settings = ProviderSettings(base_url=sim.base_url("rixapi"), api_key=KEY)
        async with httpx.AsyncClient() as client:
            gateway = ProviderGateway(get_provider("rixapi"), settings, client)
            with pytest.raises(ProviderError, match="Simulated error 503") as raised:
                await gateway.create({"prompt": "cat"}, hook_url="http://h/x", webhook_secret=None)
        assert (503, True) == (raised.value.status_code, raised.value.retryable)
