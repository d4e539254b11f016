"""The runway_ai adapter: fifteen synchronous endpoints whose answer is the finished result."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest

from receiver.errors import ProviderError
from receiver.models import Status
from receiver.providers.base import CallbackStyle, ProviderGateway
from receiver.providers.runway_ai import RunwayAi
from receiver.testing import mock_gateway

BASE_URL = "https://runway-ai.example.test"
API_KEY = "ra-key"

# Each media endpoint's documented answer.
MEDIA_ANSWERS = [
    ("generate-image", {"image_url": "https://api.runway-ai.ai/images/1.jpg"}),
    ("edit-image", {"edited_image_url": "https://api.runway-ai.ai/images/2.jpg"}),
    ("generate-video", {"video_url": "https://api.runway-ai.ai/videos/3.mp4"}),
    ("edit-video", {"edited_video_url": "https://api.runway-ai.ai/videos/4.mp4"}),
    ("video-filter", {"filtered_video_url": "https://api.runway-ai.ai/videos/5.mp4"}),
    ("image-to-video", {"video_url": "https://api.runway-ai.ai/videos/6.mp4"}),
    ("add-text-to-image", {"text_image_url": "https://api.runway-ai.ai/images/7.jpg"}),
    ("style-transfer", {"styled_image_url": "https://api.runway-ai.ai/images/8.jpg"}),
    ("resize-video", {"resized_video_url": "https://api.runway-ai.ai/videos/9.mp4"}),
    ("generate-thumbnail", {"thumbnail_url": "https://api.runway-ai.ai/images/10.jpg"}),
    ("extract-audio", {"audio_url": "https://api.runway-ai.ai/audios/11.mp3"}),
    ("speed-adjust", {"adjusted_speed_video_url": "https://api.runway-ai.ai/videos/12.mp4"}),
]
DELETED = {"message": "Media successfully deleted"}
IMAGE_METADATA = {
    "image_id": "abc",
    "size": "2MB",
    "width": 1024,
    "height": 768,
    "created_at": "2024-09-12T10:00:00Z",
}


def gateway(
    body: Any, status_code: int = 200
) -> contextlib.AbstractAsyncContextManager[tuple[ProviderGateway, list[httpx.Request]]]:
    """A gateway whose provider answers every request with `body`; yields it and the requests."""
    return mock_gateway(
        RunwayAi(), body, status_code=status_code, base_url=BASE_URL, api_key=API_KEY
    )


class TestCreate:
    """Each endpoint is named by `endpoint`; the other fields are its parameters."""

    def test_style(self) -> None:
        """runway_ai answers synchronously and has no status API."""
        assert CallbackStyle.SYNC == RunwayAi.callback_style
        assert False is RunwayAi().can_pull

    async def test_default_generate_video(self) -> None:
        """Without `endpoint`, the fields go to POST /v1/generate-video with a Bearer key."""
        async with gateway(MEDIA_ANSWERS[2][1]) as (provider, sent):
            await provider.create(
                {"prompt": "waves", "duration": 5, "fps": 24},
                hook_url="https://hooks/unused",
                webhook_secret="unused",
            )
        (request,) = sent
        assert ("POST", f"{BASE_URL}/v1/generate-video") == (request.method, str(request.url))
        assert f"Bearer {API_KEY}" == request.headers["authorization"]
        assert {"prompt": "waves", "duration": 5, "fps": 24} == json.loads(request.content)

    async def test_named_endpoint(self) -> None:
        """A named endpoint is used and `endpoint` itself is not sent."""
        fields = {"endpoint": "speed-adjust", "video_url": "https://v/1.mp4", "speed_factor": 0.5}
        async with gateway(MEDIA_ANSWERS[-1][1]) as (provider, sent):
            await provider.create(fields, hook_url=None, webhook_secret=None)
        (request,) = sent
        assert "/v1/speed-adjust" == request.url.path
        assert {"video_url": "https://v/1.mp4", "speed_factor": 0.5} == json.loads(request.content)

    @pytest.mark.parametrize("endpoint", ["image-metadata", "video-metadata"])
    def test_metadata_uses_get(self, endpoint: str) -> None:
        """The metadata endpoints are GETs with their parameters in the query."""
        request = RunwayAi().create_request(
            {"endpoint": endpoint, "image_url": "https://i/1.jpg", "width": 5, "flag": True},
            hook_url=None,
            webhook_secret=None,
        )
        assert ("GET", f"/v1/{endpoint}") == (request.method, request.path)
        assert {"image_url": "https://i/1.jpg", "width": "5", "flag": "true"} == request.params
        assert None is request.json

    async def test_delete_media(self) -> None:
        """delete-media is a DELETE with its parameters in the query."""
        fields = {"endpoint": "delete-media", "media_url": "https://m/1.mp4", "auth_token": "t"}
        async with gateway(MEDIA_ANSWERS[0][1]) as (provider, sent):
            await provider.create(fields, hook_url=None, webhook_secret=None)
        (request,) = sent
        assert "DELETE" == request.method
        assert {"media_url": "https://m/1.mp4", "auth_token": "t"} == dict(request.url.params)
        assert b"" == request.content

    def test_unknown_endpoint(self) -> None:
        """An endpoint outside the fifteen is refused."""
        with pytest.raises(ProviderError, match="generate-video"):
            RunwayAi().create_request({"endpoint": "upscale"}, hook_url=None, webhook_secret=None)


class TestCreated:
    """An answer with a media URL is a job already succeeded."""

    @pytest.mark.parametrize(("endpoint", "answer"), MEDIA_ANSWERS)
    async def test_media_answer(self, endpoint: str, answer: dict[str, str]) -> None:
        """Every documented media answer becomes a success carrying its URL."""
        async with gateway(answer) as (provider, _):
            created = await provider.create(
                {"endpoint": endpoint}, hook_url=None, webhook_secret=None
            )
        assert None is created.task_id
        assert created.update is not None
        assert Status.SUCCEEDED == created.update.status
        assert "completed" == created.update.raw_status
        assert 1.0 == created.update.progress
        assert next(iter(answer.values())) == created.update.result_url
        assert answer == created.update.payload

    def test_first_url_wins(self) -> None:
        """With several *_url fields, the first non-empty one is the result."""
        body = {"id": "x", "thumbnail_url": "", "video_url": "https://v/1.mp4", "gif_url": "g"}
        created = RunwayAi().parse_created(body)
        assert created.update is not None
        assert "https://v/1.mp4" == created.update.result_url

    @pytest.mark.parametrize("body", [DELETED, IMAGE_METADATA, {"video_url": 5}, None, []])
    def test_no_url(self, body: Any) -> None:
        """An answer without any *_url is a ProviderError."""
        with pytest.raises(ProviderError, match="_url"):
            RunwayAi().parse_created(body)

    async def test_http_error(self) -> None:
        """An HTTP error answer is a ProviderError with the provider's message."""
        async with gateway({"error": "duration is required"}, status_code=400) as (provider, _):
            with pytest.raises(ProviderError, match="duration is required") as raised:
                await provider.create({"prompt": "p"}, hook_url=None, webhook_secret=None)
        assert 400 == raised.value.status_code


class TestStatus:
    """There is no status API to pull."""

    async def test_pull_refused(self) -> None:
        """A pull is a ProviderError and sends nothing."""
        async with gateway({}) as (provider, sent):
            with pytest.raises(ProviderError, match="no status API"):
                await provider.pull("anything")
        assert [] == sent
