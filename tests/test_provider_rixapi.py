"""The rixapi adapter: its requests, and how it reads string-valued, bare or wrapped bodies."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import Status
from receiver.providers.base import CallbackStyle, ProviderGateway
from receiver.providers.rixapi import Rixapi
from receiver.testing import mock_gateway

BASE_URL = "https://rix.example.test"
API_KEY = "sk-rix"
TASK_ID = "0ab3bfe2-be23-4635-8c35-890fb2c1732d"
HOOK = "https://hooks.example.test/hooks/rixapi/tok"

# The documented create answer.
CREATED = {"code": 200, "msg": "成功", "data": {"task_id": TASK_ID}, "exec_time": 0.67573}
# The documented create example body.
EXAMPLE = {
    "callback_url": "http://baidu.com",
    "ratio": "16:9",
    "prompt": "cat",
    "style": "cinematic",
    "model": "gen3",
    "options": {
        "seconds": 10,
        "motion_vector": {"x": 0, "y": 0.3999999999999999, "z": 0, "r": -6, "bg_x_pan": 0},
    },
}
# A feed `data` object: every value a string, as clients observe.
SUCCEEDED = {
    "task_id": TASK_ID,
    "status": "3",
    "video_url": "https://cdn.example.test/v.mp4",
    "poster": "https://cdn.example.test/p.jpg",
    "last_frame": "https://cdn.example.test/l.jpg",
    "msg": "",
    "refund": "0",
    "create_time": "1730000000",
    "update_time": "1730000090",
}
FAILED = {
    "task_id": TASK_ID,
    "status": "2",
    "video_url": "",
    "poster": "",
    "last_frame": "",
    "msg": "generation failed, refunded",
    "refund": "1",
}


def wrapped(data: dict[str, Any], code: Any = 200, msg: str = "成功") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data, "exec_time": 0.1}


def gateway(
    body: Any, status_code: int = 200
) -> contextlib.AbstractAsyncContextManager[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body`; yields it and the requests."""
    return mock_gateway(Rixapi(), body, status_code=status_code, base_url=BASE_URL, api_key=API_KEY)


async def create(fields: dict[str, Any]) -> httpx.Request:
    """The one request a create call with `fields` sends."""
    async with gateway(CREATED) as (provider, sent):
        await provider.create(fields, hook_url=HOOK, webhook_secret="unused")
    (request,) = sent
    return request


class TestCreate:
    """A create call is a Bearer-authenticated POST to one of the three "pro" endpoints."""

    async def test_documented_example(self) -> None:
        """The documented fields pass through and callback_url becomes our hook URL."""
        request = await create(EXAMPLE)
        assert "POST" == request.method
        assert f"{BASE_URL}/runway/pro/generate" == str(request.url)
        assert f"Bearer {API_KEY}" == request.headers["authorization"]
        assert {**EXAMPLE, "callback_url": HOOK} == json.loads(request.content)

    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"prompt": "cat"}, "/runway/pro/generate"),
            ({"prompt": "cat", "image": "https://i/1.png"}, "/runway/pro/generate"),
            ({"video": "https://v/1.mp4", "prompt": "cat"}, "/runway/pro/video2video"),
            ({"video": "https://v/1.mp4", "image": "https://i/1.png"}, "/runway/pro/act_one"),
        ],
    )
    async def test_endpoint_inferred(self, fields: dict[str, Any], path: str) -> None:
        """Without `endpoint`, a video picks video2video and a video with an image act_one."""
        request = await create(fields)
        assert path == request.url.path

    async def test_endpoint_named(self) -> None:
        """An explicit `endpoint` wins and is not sent."""
        request = await create({"endpoint": "video2video", "prompt": "p", "video": "v"})
        assert "/runway/pro/video2video" == request.url.path
        assert {"prompt": "p", "video": "v", "callback_url": HOOK} == json.loads(request.content)

    async def test_unknown_fields_dropped(self) -> None:
        """Fields the document does not name, and empty ones, are not sent."""
        request = await create({"prompt": "p", "seed": 3, "model": None})
        assert {"prompt": "p", "callback_url": HOOK} == json.loads(request.content)

    def test_unknown_endpoint(self) -> None:
        """An endpoint outside the three is refused before anything is sent."""
        with pytest.raises(ProviderError, match="act_one"):
            Rixapi().create_request({"endpoint": "extend"}, hook_url=HOOK, webhook_secret=None)


class TestCreated:
    """The create answer's `code` is the API call's outcome, whatever the HTTP status."""

    def test_documented_answer(self) -> None:
        """The documented answer yields its task id."""
        assert TASK_ID == Rixapi().parse_created(CREATED).task_id

    def test_string_code(self) -> None:
        """A code given as the string "200" is a success too."""
        assert TASK_ID == Rixapi().parse_created(wrapped({"task_id": TASK_ID}, "200")).task_id

    def test_refusal_in_body(self) -> None:
        """A code other than 200 in an HTTP 200 answer is a ProviderError with its msg."""
        with pytest.raises(ProviderError, match="insufficient quota"):
            Rixapi().parse_created(wrapped({}, code=500, msg="insufficient quota"))

    @pytest.mark.parametrize("task_id", [None, "", "../etc/passwd", 42])
    def test_bad_task_id(self, task_id: Any) -> None:
        """A missing or unsafe task id is a ProviderError."""
        with pytest.raises(ProviderError):
            Rixapi().parse_created(wrapped({"task_id": task_id}))

    @pytest.mark.parametrize("body", [None, [], {"code": 200, "msg": "ok"}, {"data": "x"}])
    def test_no_data(self, body: Any) -> None:
        """An answer without a data object is a ProviderError too."""
        with pytest.raises(ProviderError):
            Rixapi().parse_created(body)

    async def test_http_error(self) -> None:
        """An HTTP error answer carries the provider's msg."""
        body = {"code": 401, "msg": "invalid token", "data": None}
        async with gateway(body, status_code=401) as (provider, _):
            with pytest.raises(ProviderError, match="invalid token"):
                await provider.create({"prompt": "p"}, hook_url=HOOK, webhook_secret=None)


class TestWrappedCallbackCodes:
    """A wrapped callback whose code is not 200 is not read as a task update."""

    def test_wrapped_failure_code_is_unparseable(self) -> None:
        """`{"code": 500, "data": {...status 3...}}` is refused rather than taken as success."""
        with pytest.raises(UnparseablePayload):
            Rixapi().parse_callback(wrapped(SUCCEEDED, code=500))

    def test_wrapped_string_code_200_is_read(self) -> None:
        """Codes come as strings too: "200" is success."""
        update = Rixapi().parse_callback(wrapped(SUCCEEDED, code="200"))
        assert Status.SUCCEEDED == update.status


class TestCallback:
    """Callbacks arrive bare or wrapped, with every value a string."""

    def test_style(self) -> None:
        """rixapi POSTs on every status change, without a secret."""
        assert CallbackStyle.POST == Rixapi.callback_style

    def test_succeeded(self) -> None:
        """Status "3" is a success with its video and poster."""
        update = Rixapi().parse_callback(SUCCEEDED)
        assert Status.SUCCEEDED == update.status
        assert "3" == update.raw_status
        assert TASK_ID == update.task_id
        assert 1.0 == update.progress
        assert "https://cdn.example.test/v.mp4" == update.result_url
        assert "https://cdn.example.test/p.jpg" == update.preview_url
        assert None is update.error

    def test_wrapped(self) -> None:
        """The wrapped `{code, msg, data}` form reads the same as the bare one."""
        assert Rixapi().parse_callback(SUCCEEDED) == Rixapi().parse_callback(wrapped(SUCCEEDED))

    def test_last_frame_when_no_poster(self) -> None:
        """Without a poster, the last frame is the preview."""
        update = Rixapi().parse_callback({**SUCCEEDED, "poster": ""})
        assert "https://cdn.example.test/l.jpg" == update.preview_url

    def test_failed(self) -> None:
        """Status "2" is a failure whose msg is the error; empty URLs are no URLs."""
        update = Rixapi().parse_callback(FAILED)
        assert Status.FAILED == update.status
        assert "generation failed, refunded" == update.error
        assert (None, None) == (update.result_url, update.preview_url)

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            ("0", Status.QUEUED),
            ("1", Status.RUNNING),
            ("2", Status.FAILED),
            ("3", Status.SUCCEEDED),
            (3, Status.SUCCEEDED),
            ("3.0", Status.SUCCEEDED),
            ("9", Status.QUEUED),
        ],
    )
    def test_status_numbers(self, status: Any, expected: Status) -> None:
        """Numeric statuses map whether string or number; an unknown one is queued."""
        assert expected == Rixapi().parse_callback({"task_id": TASK_ID, "status": status}).status

    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            ("pending", Status.QUEUED),
            ("running", Status.RUNNING),
            ("succeeded", Status.SUCCEEDED),
            ("error", Status.FAILED),
        ],
    )
    def test_state_wins(self, state: str, expected: Status) -> None:
        """The newer `state` word wins over the numeric status."""
        update = Rixapi().parse_callback({"task_id": TASK_ID, "status": "1", "state": state})
        assert (expected, state) == (update.status, update.raw_status)

    def test_unknown_state_falls_back(self) -> None:
        """An unknown `state` word defers to the numeric status."""
        update = Rixapi().parse_callback({"task_id": TASK_ID, "status": "3", "state": "archiving"})
        assert Status.SUCCEEDED == update.status

    @pytest.mark.parametrize(("value", "expected"), [("45", 0.45), ("0.5", 0.5), ("45%", 0.45)])
    def test_progress(self, value: str, expected: float) -> None:
        """A `progress` field, when present, is read on either scale."""
        body = {"task_id": TASK_ID, "status": "1", "progress": value}
        assert expected == Rixapi().parse_callback(body).progress

    def test_no_progress(self) -> None:
        """Without a `progress` field a running task has no progress."""
        assert None is Rixapi().parse_callback({"task_id": TASK_ID, "status": "1"}).progress

    def test_no_status(self) -> None:
        """A body with neither status nor state cannot be understood."""
        with pytest.raises(UnparseablePayload):
            Rixapi().parse_callback({"task_id": TASK_ID})


class TestStatus:
    """A pull is POST /runway/feed; its answer is wrapped."""

    async def test_pull(self) -> None:
        """The feed request carries the task id and its wrapped answer is parsed."""
        async with gateway(wrapped(SUCCEEDED)) as (provider, sent):
            update = await provider.pull(TASK_ID)
        (request,) = sent
        assert ("POST", f"{BASE_URL}/runway/feed") == (request.method, str(request.url))
        assert f"Bearer {API_KEY}" == request.headers["authorization"]
        assert {"task_id": TASK_ID} == json.loads(request.content)
        assert Status.SUCCEEDED == update.status

    async def test_refusal(self) -> None:
        """A feed answer with a code other than 200 is a ProviderError."""
        async with gateway({"code": 404, "msg": "task not found", "data": None}) as (provider, _):
            with pytest.raises(ProviderError, match="task not found"):
                await provider.pull(TASK_ID)

    @pytest.mark.parametrize("body", [None, {"code": 200, "msg": "ok"}])
    async def test_no_data(self, body: Any) -> None:
        """A feed answer without a data object cannot be understood."""
        async with gateway(body) as (provider, _):
            with pytest.raises(UnparseablePayload):
                await provider.pull(TASK_ID)

    async def test_invalid_task_id(self) -> None:
        """A task id that is not a plain token is refused before anything is sent."""
        async with gateway(wrapped(SUCCEEDED)) as (provider, sent):
            with pytest.raises(UnparseablePayload):
                await provider.pull("a b")
        assert [] == sent
