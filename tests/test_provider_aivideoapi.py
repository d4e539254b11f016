"""The aivideoapi adapter: its requests, the nudge it cannot parse, and its /status answers."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import Status
from receiver.providers.aivideoapi import Aivideoapi
from receiver.providers.base import CallbackStyle, ProviderGateway
from receiver.testing import mock_gateway

BASE_URL = "https://aivideoapi.example.test"
API_KEY = "aiv-key"
UUID = "9a1b2c3d-0000-4000-8000-123456789abc"
HOOK = "https://hooks.example.test/hooks/aivideoapi/tok"

# The documented "Generate By Video" example body.
EXAMPLE = {
    "text_prompt": "Space travel",
    "video_prompt": "https://files.aivideoapi.com/example/ship.mp4",
    "structure_transformation": 0.5,
    "seed": 0,
    "callback_url": "",
}


def status_answer(status: str, progress: Any = None, **extra: Any) -> dict[str, Any]:
    """A /status answer with the documented fields."""
    return {
        "uuid": UUID,
        "status": status,
        "progress": progress,
        "url": None,
        "gif_url": None,
    } | extra


def gateway(
    body: Any, status_code: int = 200
) -> contextlib.AbstractAsyncContextManager[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body`; yields it and the requests."""
    return mock_gateway(
        Aivideoapi(), body, status_code=status_code, base_url=BASE_URL, api_key=API_KEY
    )


async def create(fields: dict[str, Any]) -> httpx.Request:
    """The one request a create call with `fields` sends."""
    async with gateway({"uuid": UUID}) as (provider, sent):
        await provider.create(fields, hook_url=HOOK, webhook_secret=None)
    (request,) = sent
    return request


class TestCreate:
    """A create call POSTs the user's fields to the endpoint they pick, with our callback_url."""

    async def test_documented_example(self) -> None:
        """The video example goes to /runway/generate/video with the bare key and our hook."""
        request = await create(EXAMPLE)
        assert "POST" == request.method
        assert f"{BASE_URL}/runway/generate/video" == str(request.url)
        assert API_KEY == request.headers["authorization"]
        assert {**EXAMPLE, "callback_url": HOOK} == json.loads(request.content)

    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"text_prompt": "t"}, "/runway/generate/text"),
            ({"image_prompt": "https://i/1.png"}, "/runway/generate/image"),
            (
                {"image_prompt": "https://i/1.png", "text_prompt": "t"},
                "/runway/generate/imageDescription",
            ),
            ({"video_prompt": "https://v/1.mp4", "image_prompt": "i"}, "/runway/generate/video"),
        ],
    )
    async def test_endpoint_inferred(self, fields: dict[str, Any], path: str) -> None:
        """Without `endpoint`, the prompts present pick the endpoint."""
        assert path == (await create(fields)).url.path

    async def test_endpoint_named(self) -> None:
        """An explicit `endpoint` wins and is not sent; every other field passes through."""
        request = await create({"endpoint": "extend", "uuid": "prev", "seed": 7})
        assert "/runway/extend" == request.url.path
        assert {"uuid": "prev", "seed": 7, "callback_url": HOOK} == json.loads(request.content)

    def test_no_hook(self) -> None:
        """Without a hook URL no callback_url is added."""
        request = Aivideoapi().create_request(
            {"text_prompt": "t"}, hook_url=None, webhook_secret=None
        )
        assert {"text_prompt": "t"} == request.json

    def test_unknown_endpoint(self) -> None:
        """An endpoint outside the five is refused before anything is sent."""
        with pytest.raises(ProviderError, match="imageDescription"):
            Aivideoapi().create_request({"endpoint": "img"}, hook_url=HOOK, webhook_secret=None)


class TestCreated:
    """The create answer carries the task's `uuid`."""

    def test_uuid(self) -> None:
        """A top-level uuid is the task id."""
        assert UUID == Aivideoapi().parse_created({"uuid": UUID}).task_id

    def test_uuid_under_data(self) -> None:
        """A uuid nested under `data` is found too."""
        assert UUID == Aivideoapi().parse_created({"data": {"uuid": UUID}}).task_id

    @pytest.mark.parametrize("body", [{}, {"uuid": ""}, {"uuid": "a/b"}, None, {"message": "busy"}])
    def test_no_uuid(self, body: Any) -> None:
        """An answer without a usable uuid is a ProviderError."""
        with pytest.raises(ProviderError):
            Aivideoapi().parse_created(body)


class TestCallback:
    """The callback is a bodiless GET nudge: there is nothing in it to parse."""

    def test_style(self) -> None:
        """aivideoapi only nudges."""
        assert CallbackStyle.NUDGE == Aivideoapi.callback_style

    def test_unparseable(self) -> None:
        """Any callback body is refused: the truth comes from /status."""
        with pytest.raises(UnparseablePayload):
            Aivideoapi().parse_callback({"uuid": UUID, "status": "success"})


class TestStatus:
    """A pull is GET /status?uuid=; its statuses and loose progress map onto the canonical ones."""

    async def test_pull(self) -> None:
        """The status request carries the uuid in the query and the bare key."""
        async with gateway(status_answer("submitted", 0.3)) as (provider, sent):
            update = await provider.pull(UUID)
        (request,) = sent
        assert "GET" == request.method
        assert f"{BASE_URL}/status?uuid={UUID}" == str(request.url)
        assert API_KEY == request.headers["authorization"]
        assert (Status.RUNNING, 0.3) == (update.status, update.progress)

    def test_queued(self) -> None:
        """`in queue` with a null progress is queued without progress."""
        update = Aivideoapi().parse_status(status_answer("in queue"), UUID)
        assert (Status.QUEUED, None, "in queue") == (
            update.status,
            update.progress,
            update.raw_status,
        )

    @pytest.mark.parametrize("status", ["submitted", "processing", "running"])
    def test_running(self, status: str) -> None:
        """Every in-flight word is running."""
        assert Status.RUNNING == Aivideoapi().parse_status(status_answer(status, 10), UUID).status

    @pytest.mark.parametrize(("value", "expected"), [(0.5, 0.5), (40, 0.4), ("75", 0.75)])
    def test_progress_scale_guessed(self, value: Any, expected: float) -> None:
        """Progress is read as a fraction or a percentage, whichever it looks like."""
        assert (
            expected == Aivideoapi().parse_status(status_answer("submitted", value), UUID).progress
        )

    def test_success(self) -> None:
        """`success` is a success with the video and its gif preview."""
        body = status_answer("success", 1, url="https://cdn/v.mp4", gif_url="https://cdn/v.gif")
        update = Aivideoapi().parse_status(body, UUID)
        assert Status.SUCCEEDED == update.status
        assert 1.0 == update.progress
        assert ("https://cdn/v.mp4", "https://cdn/v.gif") == (update.result_url, update.preview_url)
        assert UUID == update.task_id

    def test_failed(self) -> None:
        """`failed` is a failure, with an error only when the answer gives one."""
        update = Aivideoapi().parse_status(status_answer("failed"), UUID)
        assert (Status.FAILED, None) == (update.status, update.error)
        assert (
            "bad input"
            == Aivideoapi().parse_status(status_answer("failed", error="bad input"), UUID).error
        )

    def test_unknown_status(self) -> None:
        """An unknown status is queued."""
        assert Status.QUEUED == Aivideoapi().parse_status(status_answer("paused"), UUID).status

    def test_task_id_from_request(self) -> None:
        """Without a uuid in the answer, the pulled task id is kept."""
        update = Aivideoapi().parse_status({"status": "in queue"}, UUID)
        assert UUID == update.task_id

    @pytest.mark.parametrize("body", [{"uuid": UUID}, [], None])
    def test_no_status(self, body: Any) -> None:
        """An answer without a status cannot be understood."""
        with pytest.raises(UnparseablePayload):
            Aivideoapi().parse_status(body, UUID)

    async def test_invalid_task_id(self) -> None:
        """A task id that is not a plain token is refused before anything is sent."""
        async with gateway(status_answer("success")) as (provider, sent):
            with pytest.raises(UnparseablePayload):
                await provider.pull("x?uuid=y")
        assert [] == sent
