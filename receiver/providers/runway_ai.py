"""runway_ai: fifteen synchronous `/v1/...` endpoints that answer with the media URL itself.

There is no task id, status API or callback: a create call that answers with a URL is a
job that has already succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from receiver.errors import ProviderError
from receiver.models import Status, Update
from receiver.providers.base import CallbackStyle, Created, Provider, ProviderRequest
from receiver.providers.coerce import as_str

__all__ = ["RunwayAi"]

# endpoint -> HTTP method; GET and DELETE carry their parameters in the query.
_ENDPOINTS = {
    "generate-image": "POST",
    "edit-image": "POST",
    "generate-video": "POST",
    "edit-video": "POST",
    "video-filter": "POST",
    "image-metadata": "GET",
    "video-metadata": "GET",
    "image-to-video": "POST",
    "add-text-to-image": "POST",
    "style-transfer": "POST",
    "resize-video": "POST",
    "generate-thumbnail": "POST",
    "extract-audio": "POST",
    "speed-adjust": "POST",
    "delete-media": "DELETE",
}


# endpoint -> the parameters it cannot do without (its documentation's "required")
_REQUIRED = {
    "generate-image": ("prompt",),
    "edit-image": ("image_url", "edit_type"),
    "generate-video": ("prompt", "duration"),
    "edit-video": ("video_url", "edit_type"),
    "video-filter": ("video_url", "filter"),
    "image-metadata": ("image_url",),
    "video-metadata": ("video_url",),
    "image-to-video": ("image_url", "duration"),
    "add-text-to-image": ("image_url", "text", "position"),
    "style-transfer": ("image_url", "style_reference"),
    "resize-video": ("video_url", "new_width", "new_height"),
    "generate-thumbnail": ("video_url",),
    "extract-audio": ("video_url",),
    "speed-adjust": ("video_url", "speed_factor"),
    "delete-media": ("media_url", "auth_token"),
}

# Every parameter of every endpoint, required or optional, and `endpoint` itself.
_FIELDS = (
    "endpoint",
    "prompt",
    "style",
    "duration",
    "fps",
    "image_url",
    "video_url",
    "media_url",
    "edit_type",
    "filter",
    "resize_width",
    "resize_height",
    "start_time",
    "end_time",
    "text",
    "position",
    "font_size",
    "style_reference",
    "new_width",
    "new_height",
    "time_position",
    "speed_factor",
    "auth_token",
)


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _first_url(body: Any) -> str | None:
    """The first `*_url` value of an answer: each endpoint names its media URL differently."""
    if isinstance(body, dict):
        for key, value in body.items():
            if str(key).endswith("_url") and isinstance(value, str) and (url := as_str(value)):
                return url
    return None


class RunwayAi(Provider):
    name: ClassVar[str] = "runway_ai"
    callback_style: ClassVar[CallbackStyle] = CallbackStyle.SYNC

    def auth_headers(self, api_key: str) -> dict[str, str]:
        # The document names no scheme; Bearer is the assumption PROVIDERS.md records.
        return {"Authorization": f"Bearer {api_key}"}

    input_fields: ClassVar[tuple[str, ...]] = _FIELDS

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        endpoint = fields.get("endpoint", "generate-video")
        if not isinstance(endpoint, str) or endpoint not in _REQUIRED:
            raise ProviderError(
                f"runway_ai has no endpoint {endpoint!r}; use one of {sorted(_ENDPOINTS)}"
            )
        return _REQUIRED[endpoint]

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        endpoint = fields.get("endpoint", "generate-video")
        method = _ENDPOINTS.get(endpoint)
        if method is None:
            raise ProviderError(
                f"runway_ai has no endpoint {endpoint!r}; use one of {sorted(_ENDPOINTS)}"
            )
        values = {key: value for key, value in fields.items() if key != "endpoint"}
        path = f"/v1/{endpoint}"
        if method == "POST":
            return ProviderRequest(method=method, path=path, json=values)
        params = {key: _query_value(value) for key, value in values.items() if value is not None}
        return ProviderRequest(method=method, path=path, params=params)

    def parse_created(self, body: Any) -> Created:
        result_url = _first_url(body)
        if result_url is None:
            raise ProviderError(f"{self.error_message(body, 200)}, with no *_url field")
        update = Update(
            status=Status.SUCCEEDED,
            raw_status="completed",
            progress=1.0,
            result_url=result_url,
            payload=body,
        )
        return Created(task_id=None, update=update)
