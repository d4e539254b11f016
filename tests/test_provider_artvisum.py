"""The artvisum adapter: JSON and multipart uploads within the limits, and its /status answers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import Status
from receiver.providers.artvisum import Artvisum
from receiver.providers.base import CallbackStyle, ProviderGateway
from receiver.testing import mock_gateway

BASE_URL = "https://artvisum.example.test/api"
API_KEY = "av-key"
UUID = "12345678-1234-5678-1234-567812345678"
MB = 1024 * 1024

# The documented answers.
CREATED = {"status": "success", "message": "Task created successfully", "data": {"uuid": UUID}}
COMPLETED = {
    "status": "success",
    "message": "Task completed",
    "data": {
        "status": "completed",
        "progress": 100,
        "url": "https://storage.artvisum.com/videos/output.mp4",
        "preview_url": "https://storage.artvisum.com/videos/preview.gif",
    },
}


def status_answer(status: str, progress: Any = 0, message: str = "ok", **extra: Any) -> Any:
    data = {"status": status, "progress": progress, "url": None, "preview_url": None} | extra
    return {"status": "success", "message": message, "data": data}


def gateway(
    body: Any, status_code: int = 200
) -> contextlib.AbstractAsyncContextManager[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body`; yields it and the requests."""
    return mock_gateway(
        Artvisum(), body, status_code=status_code, base_url=BASE_URL, api_key=API_KEY
    )


async def create(fields: dict[str, Any]) -> httpx.Request:
    """The one request a create call with `fields` sends (the hook URL is offered and unused)."""
    async with gateway(CREATED) as (provider, sent):
        created = await provider.create(fields, hook_url="https://hooks/x", webhook_secret="s")
    assert UUID == created.task_id
    (request,) = sent
    return request


def make_file(tmp_path: Path, name: str, size: int = 16) -> Path:
    """A local file of `size` bytes (sparse, so large ones cost nothing)."""
    path = tmp_path / name
    with path.open("wb") as handle:
        handle.write(b"\x89data")
        handle.truncate(size)
    return path


class TestCreate:
    """Text jobs are JSON; image and video jobs upload a local file as multipart."""

    async def test_text(self) -> None:
        """A text job POSTs JSON prompt and negative_prompt with x-api-key, and no callback."""
        request = await create({"prompt": "man smoking", "negative_prompt": "blur", "seed": 1})
        assert ("POST", f"{BASE_URL}/runway/text") == (request.method, str(request.url))
        assert API_KEY == request.headers["x-api-key"]
        assert {"prompt": "man smoking", "negative_prompt": "blur"} == json.loads(request.content)

    async def test_image_upload(self, tmp_path: Path) -> None:
        """An image job uploads the file with its guessed content type and the text as fields."""
        image = make_file(tmp_path, "frame.png")
        request = await create({"image": str(image), "negative_prompt": "blur"})
        body = request.read()
        assert f"{BASE_URL}/runway/image" == str(request.url)
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert b'name="image"; filename="frame.png"' in body
        assert b"Content-Type: image/png" in body
        assert b"\x89data" in body
        assert b'name="negative_prompt"\r\n\r\nblur' in body

    async def test_image_with_prompt(self, tmp_path: Path) -> None:
        """An image with a prompt goes to /runway/image-desc with the prompt as a field."""
        image = make_file(tmp_path, "frame.jpg")
        request = await create({"image": image, "prompt": "A man walking in the rain"})
        assert "/api/runway/image-desc" == request.url.path
        assert b'name="prompt"\r\n\r\nA man walking in the rain' in request.read()

    @pytest.mark.parametrize(
        ("name", "content_type"),
        [("clip.mp4", b"video/mp4"), ("clip.MOV", b"video/quicktime"), ("clip.avi", b"video/")],
    )
    async def test_video_upload(self, tmp_path: Path, name: str, content_type: bytes) -> None:
        """A video in a documented format goes to /runway/video as the `video` file."""
        request = await create({"video": str(make_file(tmp_path, name))})
        assert "/api/runway/video" == request.url.path
        body = request.read()
        assert f'name="video"; filename="{name}"'.encode() in body
        assert b"Content-Type: " + content_type in body

    async def test_extend_named(self, tmp_path: Path) -> None:
        """`endpoint` picks /runway/extend and is not sent."""
        video = make_file(tmp_path, "clip.mp4")
        request = await create({"endpoint": "extend", "video": str(video)})
        assert "/api/runway/extend" == request.url.path
        assert b'name="endpoint"' not in request.read()

    def test_unknown_endpoint(self) -> None:
        """An endpoint outside the five is refused."""
        with pytest.raises(ProviderError, match="image-desc"):
            Artvisum().create_request({"endpoint": "desc"}, hook_url=None, webhook_secret=None)


class TestLimits:
    """The documented upload limits are enforced before anything is sent."""

    async def test_image_too_large(self, tmp_path: Path) -> None:
        """An image of 10 MB is not "less than 10MB"."""
        image = make_file(tmp_path, "big.png", 10 * MB)
        async with gateway(CREATED) as (provider, sent):
            with pytest.raises(ProviderError, match="10 MB"):
                await provider.create({"image": str(image)}, hook_url=None, webhook_secret=None)
        assert [] == sent

    def test_image_just_under(self, tmp_path: Path) -> None:
        """An image one byte under 10 MB is accepted."""
        image = make_file(tmp_path, "ok.png", 10 * MB - 1)
        request = Artvisum().create_request(
            {"image": str(image)}, hook_url=None, webhook_secret=None
        )
        assert request.files is not None
        assert 10 * MB - 1 == len(request.files["image"][1])

    def test_video_too_large(self, tmp_path: Path) -> None:
        """A video of 100 MB is refused."""
        video = make_file(tmp_path, "big.mp4", 100 * MB)
        with pytest.raises(ProviderError, match="100 MB"):
            Artvisum().create_request({"video": str(video)}, hook_url=None, webhook_secret=None)

    @pytest.mark.parametrize("name", ["clip.mkv", "clip.webm", "clip"])
    def test_video_format(self, tmp_path: Path, name: str) -> None:
        """Only MP4, MOV and AVI videos are accepted."""
        video = make_file(tmp_path, name)
        with pytest.raises(ProviderError, match="MP4, MOV or AVI"):
            Artvisum().create_request({"video": str(video)}, hook_url=None, webhook_secret=None)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist is a ProviderError, not an OSError."""
        missing = tmp_path / "gone.png"
        with pytest.raises(ProviderError, match="cannot be read"):
            Artvisum().create_request({"image": str(missing)}, hook_url=None, webhook_secret=None)

    def test_not_a_path(self) -> None:
        """A file field must be a local path."""
        with pytest.raises(ProviderError, match="local file path"):
            Artvisum().create_request({"image": 42}, hook_url=None, webhook_secret=None)


class TestCreated:
    """The outer `status` of the create answer is the API call's outcome."""

    def test_documented_answer(self) -> None:
        """The documented answer yields its uuid."""
        assert UUID == Artvisum().parse_created(CREATED).task_id

    def test_refusal(self) -> None:
        """An outer status other than "success" is a ProviderError with the message."""
        body = {"status": "error", "message": "Insufficient credits", "data": None}
        with pytest.raises(ProviderError, match="Insufficient credits"):
            Artvisum().parse_created(body)

    @pytest.mark.parametrize("data", [{}, {"uuid": "a b"}, None, "x"])
    def test_no_uuid(self, data: Any) -> None:
        """A success without a usable uuid is a ProviderError."""
        with pytest.raises(ProviderError):
            Artvisum().parse_created({"status": "success", "message": "ok", "data": data})

    def test_not_an_object(self) -> None:
        """An answer that is not an object is a ProviderError."""
        with pytest.raises(ProviderError):
            Artvisum().parse_created(["success"])


class TestStatus:
    """A pull is GET /status/{uuid}; `data.status` is the job's."""

    def test_style(self) -> None:
        """artvisum never calls back: it is polled."""
        assert CallbackStyle.POLL == Artvisum.callback_style

    async def test_pull(self) -> None:
        """The documented completed answer is a success with its video and preview."""
        async with gateway(COMPLETED) as (provider, sent):
            update = await provider.pull(UUID)
        (request,) = sent
        assert ("GET", f"{BASE_URL}/status/{UUID}") == (request.method, str(request.url))
        assert API_KEY == request.headers["x-api-key"]
        assert Status.SUCCEEDED == update.status
        assert "completed" == update.raw_status
        assert 1.0 == update.progress
        assert "https://storage.artvisum.com/videos/output.mp4" == update.result_url
        assert "https://storage.artvisum.com/videos/preview.gif" == update.preview_url
        assert UUID == update.task_id

    @pytest.mark.parametrize(
        ("status", "progress", "expected"),
        [
            ("success", 100, Status.SUCCEEDED),
            ("processing", 40, Status.RUNNING),
            ("in_progress", 40, Status.RUNNING),
            ("RUNNING", 40, Status.RUNNING),
            ("pending", 0, Status.QUEUED),
            ("in queue", 0, Status.QUEUED),
            ("rendering", 10, Status.RUNNING),
            ("rendering", 0, Status.QUEUED),
            ("rendering", None, Status.QUEUED),
        ],
    )
    def test_statuses(self, status: str, progress: Any, expected: Status) -> None:
        """Known words map directly; an unknown one is running once progress has moved."""
        update = Artvisum().parse_status(status_answer(status, progress), UUID)
        assert expected == update.status

    def test_progress_percent(self) -> None:
        """`data.progress` is an integer percentage."""
        assert 0.4 == Artvisum().parse_status(status_answer("processing", 40), UUID).progress

    def test_progress_one_percent(self) -> None:
        """1 is one percent, not a whole job."""
        assert 0.01 == Artvisum().parse_status(status_answer("processing", 1), UUID).progress

    def test_failed(self) -> None:
        """A failed job carries the answer's message as its error."""
        body = status_answer("failed", 40, message="Task failed: moderation")
        update = Artvisum().parse_status(body, UUID)
        assert (Status.FAILED, "Task failed: moderation") == (update.status, update.error)

    def test_refused_status_call(self) -> None:
        """An outer status other than "success" fails the call, not the job."""
        with pytest.raises(ProviderError, match="Task not found"):
            Artvisum().parse_status({"status": "error", "message": "Task not found"}, UUID)

    @pytest.mark.parametrize(
        "body", [None, {"status": "success"}, {"status": "success", "data": {"progress": 5}}]
    )
    def test_unparseable(self, body: Any) -> None:
        """An answer without a data object or data.status cannot be understood."""
        with pytest.raises(UnparseablePayload):
            Artvisum().parse_status(body, UUID)
