"""The apiframe adapter: its requests, and how it reads the documented answers and webhooks."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest

from receiver.errors import ConfigError, ProviderError, UnparseablePayload
from receiver.models import Status
from receiver.providers.apiframe import Apiframe
from receiver.providers.base import CallbackStyle, ProviderGateway
from receiver.testing import mock_gateway

BASE_URL = "https://apiframe.example.test/v2"
API_KEY = "af-key"
TASK_ID = "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a"

# Documented: the final result has `percentage` as a number, a job in progress as a string.
FINISHED = {
    "task_id": TASK_ID,
    "task_type": "runway",
    "video_url": "https://cdn.example.test/xxxx.mp4",
    "status": "finished",
    "percentage": 100,
}
PROCESSING = {"task_id": TASK_ID, "task_type": "runway", "status": "processing", "percentage": "40"}
# Observed in clients, not documented.
FAILED = {"task_id": TASK_ID, "task_type": "runway", "status": "failed", "message": "NSFW prompt"}


def gateway(
    body: Any, status_code: int = 200, base_url: str | None = BASE_URL
) -> contextlib.AbstractAsyncContextManager[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body`; yields it and the requests."""
    return mock_gateway(
        Apiframe(), body, status_code=status_code, base_url=base_url, api_key=API_KEY
    )


class TestCreate:
    """A create call is one POST /runway-imagine with the webhook fields filled in."""

    async def test_request(self) -> None:
        """The request goes to the configured base URL with the bare key and the webhook fields."""
        async with gateway({"task_id": TASK_ID}) as (provider, sent):
            created = await provider.create(
                {"prompt": "A mech", "duration": 10, "unknown": "dropped", "flip": None},
                hook_url="https://hooks.example.test/hooks/apiframe/tok",
                webhook_secret="abc123",
            )
        (request,) = sent
        assert "POST" == request.method
        assert f"{BASE_URL}/runway-imagine" == str(request.url)
        assert API_KEY == request.headers["authorization"]
        assert {
            "prompt": "A mech",
            "duration": 10,
            "generation_type": "text2video",
            "webhook_url": "https://hooks.example.test/hooks/apiframe/tok",
            "webhook_secret": "abc123",
        } == json.loads(request.content)
        assert TASK_ID == created.task_id
        assert None is created.update

    async def test_generation_type_kept(self) -> None:
        """A generation type given by the user is sent as it is."""
        async with gateway({"task_id": TASK_ID}) as (provider, sent):
            await provider.create(
                {"prompt": "p", "generation_type": "video2video", "video_url": "https://v/1.mp4"},
                hook_url=None,
                webhook_secret=None,
            )
        body = json.loads(sent[0].content)
        assert {
            "prompt": "p",
            "generation_type": "video2video",
            "video_url": "https://v/1.mp4",
        } == body

    async def test_answer_without_task_id(self) -> None:
        """An answer without a usable task id is a ProviderError."""
        async with gateway({"errors": "busy"}) as (provider, _):
            with pytest.raises(ProviderError):
                await provider.create({"prompt": "p"}, hook_url=None, webhook_secret=None)

    async def test_http_error(self) -> None:
        """An HTTP error answer is a ProviderError with the status and the provider's message."""
        async with gateway({"message": "Invalid API key"}, status_code=401) as (provider, _):
            with pytest.raises(ProviderError, match="Invalid API key") as raised:
                await provider.create({"prompt": "p"}, hook_url=None, webhook_secret=None)
        assert 401 == raised.value.status_code
        assert False is raised.value.retryable

    async def test_base_url_required(self) -> None:
        """Without a configured base URL nothing is sent: the URL is never hard-coded."""
        async with gateway({"task_id": TASK_ID}, base_url=None) as (provider, sent):
            with pytest.raises(ConfigError, match="RECEIVER_APIFRAME_BASE_URL"):
                await provider.create({"prompt": "p"}, hook_url=None, webhook_secret=None)
        assert [] == sent

    async def test_api_key_required(self) -> None:
        """Without an API key nothing is sent, and the error names the variable to set."""
        async with mock_gateway(Apiframe(), {"task_id": TASK_ID}, api_key="") as (provider, sent):
            with pytest.raises(ConfigError, match="RECEIVER_APIFRAME_API_KEY") as raised:
                await provider.create({"prompt": "p"}, hook_url=None, webhook_secret=None)
        assert [] == sent
        assert "RECEIVER_APIFRAME_API_KEY" == provider.missing_setting()
        assert "unreachable" not in str(raised.value)


class TestCallback:
    """Webhook bodies become Updates, whatever type `percentage` has."""

    def test_style(self) -> None:
        """apiframe echoes the job's secret in x-webhook-secret."""
        assert CallbackStyle.SECRET_POST == Apiframe.callback_style

    def test_finished(self) -> None:
        """The documented final result, with the number 100, is a success with its video."""
        update = Apiframe().parse_callback(FINISHED)
        assert Status.SUCCEEDED == update.status
        assert "finished" == update.raw_status
        assert TASK_ID == update.task_id
        assert 1.0 == update.progress
        assert "https://cdn.example.test/xxxx.mp4" == update.result_url
        assert FINISHED == update.payload

    def test_processing_string_percentage(self) -> None:
        """The documented progress result, with the string "40", is running at 0.4."""
        update = Apiframe().parse_callback(PROCESSING)
        assert Status.RUNNING == update.status
        assert 0.4 == update.progress
        assert None is update.result_url

    def test_failed(self) -> None:
        """A failed result carries its message as the error."""
        update = Apiframe().parse_callback(FAILED)
        assert Status.FAILED == update.status
        assert "NSFW prompt" == update.error

    def test_unknown_status(self) -> None:
        """A status outside the known words is read as queued, never as an error."""
        update = Apiframe().parse_callback({"task_id": TASK_ID, "status": "staged"})
        assert Status.QUEUED == update.status
        assert "staged" == update.raw_status

    def test_no_status(self) -> None:
        """A body without a status cannot be understood."""
        with pytest.raises(UnparseablePayload):
            Apiframe().parse_callback({"task_id": TASK_ID})


class TestStatus:
    """A pull is POST /fetch with the task id; its answer is read like a webhook."""

    async def test_pull(self) -> None:
        """The fetch result is parsed into an Update."""
        async with gateway(PROCESSING) as (provider, sent):
            update = await provider.pull(TASK_ID)
        (request,) = sent
        assert ("POST", f"{BASE_URL}/fetch") == (request.method, str(request.url))
        assert {"task_id": TASK_ID} == json.loads(request.content)
        assert Status.RUNNING == update.status

    async def test_invalid_task_id(self) -> None:
        """A task id that is not a plain token is refused before anything is sent."""
        async with gateway(PROCESSING) as (provider, sent):
            with pytest.raises(UnparseablePayload):
                await provider.pull("../../admin")
        assert [] == sent

    async def test_not_an_object(self) -> None:
        """A fetch answer that is not an object cannot be understood."""
        async with gateway(["not", "an", "object"]) as (provider, _):
            with pytest.raises(UnparseablePayload):
                await provider.pull(TASK_ID)
