"""Simulated runway_ai: the fifteen synchronous `/v1/...` endpoints, each answering its media URL.

There is no job to follow: the answer is the result. With `fail` on, calls answer 422.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, NamedTuple

from litestar import Response, Router, route

from receiver.simulator.core import Phase
from receiver.simulator.http import (
    AnyRequest,
    bearer_key,
    create_refusal,
    json_object,
    key_guard,
    media_url,
    simulator_of,
)

__all__ = ["router"]

_PROVIDER = "runway_ai"
_FAILURE = "Generation failed: the request could not be processed"


class _Endpoint(NamedTuple):
    method: str
    required: tuple[str, ...]
    url_key: str | None = None  # the answer's media URL field, None for the non-media ones
    extension: str = "mp4"


_ENDPOINTS = {
    "generate-image": _Endpoint("POST", ("prompt",), "image_url", "jpg"),
    "edit-image": _Endpoint("POST", ("image_url", "edit_type"), "edited_image_url", "jpg"),
    "generate-video": _Endpoint("POST", ("prompt", "duration"), "video_url"),
    "edit-video": _Endpoint("POST", ("video_url", "edit_type"), "edited_video_url"),
    "video-filter": _Endpoint("POST", ("video_url", "filter"), "filtered_video_url"),
    "image-metadata": _Endpoint("GET", ("image_url",)),
    "video-metadata": _Endpoint("GET", ("video_url",)),
    "image-to-video": _Endpoint("POST", ("image_url", "duration"), "video_url"),
    "add-text-to-image": _Endpoint(
        "POST", ("image_url", "text", "position"), "text_image_url", "jpg"
    ),
    "style-transfer": _Endpoint(
        "POST", ("image_url", "style_reference"), "styled_image_url", "jpg"
    ),
    "resize-video": _Endpoint(
        "POST", ("video_url", "new_width", "new_height"), "resized_video_url"
    ),
    "generate-thumbnail": _Endpoint("POST", ("video_url",), "thumbnail_url", "jpg"),
    "extract-audio": _Endpoint("POST", ("video_url",), "audio_url", "mp3"),
    "speed-adjust": _Endpoint("POST", ("video_url", "speed_factor"), "adjusted_speed_video_url"),
    "delete-media": _Endpoint("DELETE", ("media_url", "auth_token")),
}


def _error(status_code: int, message: str) -> Response[Any]:
    return Response({"error": message}, status_code=status_code)


def _answer(name: str, endpoint: _Endpoint, request: AnyRequest) -> dict[str, Any]:
    """The documented answer of one endpoint."""
    if endpoint.url_key is not None:
        return {endpoint.url_key: media_url(request, endpoint.extension)}
    created_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if name == "image-metadata":
        return {
            "image_id": uuid.uuid4().hex,
            "size": "2MB",
            "width": 1024,
            "height": 768,
            "created_at": created_at,
        }
    if name == "video-metadata":
        return {
            "video_id": uuid.uuid4().hex,
            "size": "50MB",
            "duration": "30s",
            "created_at": created_at,
        }
    return {"message": "Media successfully deleted"}


async def _parameters(request: AnyRequest) -> dict[str, Any] | None:
    """POST parameters from the JSON body; GET and DELETE ones from the query (or a body)."""
    if request.method == "POST":
        return await json_object(request)
    parameters: dict[str, Any] = dict(request.query_params.items())
    if await request.body():
        parameters.update(await json_object(request) or {})
    return parameters


@route("/v1/{name:str}", http_method=["GET", "POST", "DELETE"], status_code=200)
async def call(request: AnyRequest) -> Response[Any]:
    name = request.path_params["name"]
    endpoint = _ENDPOINTS.get(name)
    if endpoint is None:
        return _error(404, "Endpoint not found")
    if request.method != endpoint.method:
        return _error(405, f"Use {endpoint.method} for /v1/{name}")
    if (refusal := create_refusal(request, _error)) is not None:
        return refusal
    parameters = await _parameters(request)
    if parameters is None:
        return _error(400, "The body must be a JSON object")
    missing = [key for key in endpoint.required if parameters.get(key) in (None, "")]
    if missing:
        return _error(400, f"{missing[0]} is required")
    sim = simulator_of(request)
    if sim.config.fail:
        sim.add(_PROVIDER, status=Phase.FAILED)
        return _error(422, _FAILURE)
    answer = _answer(name, endpoint, request)
    result_url = answer[endpoint.url_key] if endpoint.url_key else None
    sim.add(_PROVIDER, status=Phase.SUCCEEDED, progress=100, result_url=result_url)
    return Response(answer)


router = Router(
    path=f"/{_PROVIDER}",
    route_handlers=[call],
    before_request=key_guard(_PROVIDER, bearer_key, _error),
)
