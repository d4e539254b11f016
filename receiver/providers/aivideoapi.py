"""aivideoapi: one bodiless GET `<callback_url>?uuid=<uuid>` when a job ends; /status has the truth.

Quirks: the callback is only a nudge, so it is never parsed; `progress` is null while
queued and otherwise a number whose scale is not documented (0..1 or 0..100).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import Status, Update
from receiver.providers.base import (
    CallbackStyle,
    Created,
    Provider,
    ProviderRequest,
    valid_task_id,
)
from receiver.providers.coerce import as_str, progress

__all__ = ["Aivideoapi"]

_ENDPOINTS = {
    "text": "/runway/generate/text",
    "image": "/runway/generate/image",
    "imageDescription": "/runway/generate/imageDescription",
    "video": "/runway/generate/video",
    "extend": "/runway/extend",
}

# `in queue`, `submitted`, `success` and `failed` are seen; the rest are tolerated guesses.
_STATUSES = {
    "in queue": Status.QUEUED,
    "submitted": Status.RUNNING,
    "processing": Status.RUNNING,
    "running": Status.RUNNING,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
}


# endpoint -> the fields it cannot do without (the simulator refuses the same)
_REQUIRED = {
    "text": ("text_prompt",),
    "image": ("image_prompt",),
    "imageDescription": ("text_prompt", "image_prompt"),
    "video": ("text_prompt", "video_prompt"),
    "extend": (),
}

# The fields aivideoapi's Gen-3 endpoints take, besides callback_url (filled in).
_FIELDS = (
    "endpoint",
    "text_prompt",
    "image_prompt",
    "video_prompt",
    "model",
    "width",
    "height",
    "motion",
    "seed",
    "time",
    "structure_transformation",
    "uuid",
)

# A provider group's `ratio` as the width and height aivideoapi's Gen-3 takes.
_SIZES = {"16:9": (1280, 768), "9:16": (768, 1280)}


def _endpoint(fields: Mapping[str, Any]) -> str:
    return _ENDPOINTS[_endpoint_name(fields)]


def _endpoint_name(fields: Mapping[str, Any]) -> str:
    name = fields.get("endpoint")
    if name is None:
        if fields.get("video_prompt"):
            name = "video"
        elif fields.get("image_prompt") and fields.get("text_prompt"):
            name = "imageDescription"
        elif fields.get("image_prompt"):
            name = "image"
        else:
            name = "text"
    if name not in _ENDPOINTS:
        raise ProviderError(f"aivideoapi has no endpoint {name!r}; use one of {sorted(_ENDPOINTS)}")
    return str(name)


def _unwrap(body: Any) -> dict[str, Any] | None:
    """The object that carries `uuid`: the answer itself or, in some answers, its `data`."""
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if "uuid" not in body and isinstance(data, dict):
        return data
    return body


class Aivideoapi(Provider):
    name: ClassVar[str] = "aivideoapi"
    callback_style: ClassVar[CallbackStyle] = CallbackStyle.NUDGE
    input_fields: ClassVar[tuple[str, ...]] = _FIELDS

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        return _REQUIRED[_endpoint_name(fields)]

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": api_key}  # the bare key, no "Bearer"

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        body = {key: value for key, value in fields.items() if key != "endpoint"}
        if hook_url is not None:
            body["callback_url"] = hook_url
        return ProviderRequest(method="POST", path=_endpoint(fields), json=body)

    def common_request(self, common: Mapping[str, Any]) -> dict[str, Any]:
        image, ratio = common.get("image_url"), common.get("ratio")
        size = _SIZES.get(str(ratio)) if ratio is not None else None
        if ratio is not None and size is None:
            raise ProviderError(f"aivideoapi takes ratio {' or '.join(_SIZES)}, not {ratio!r}")
        width, height = size or (None, None)
        fields = {
            "endpoint": "image" if image else "text",
            "text_prompt": common.get("prompt"),
            "image_prompt": image,
            "time": common.get("duration"),
            "model": common.get("model"),
            "width": width,
            "height": height,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def parse_created(self, body: Any) -> Created:
        data = _unwrap(body)
        task_id = data.get("uuid") if data is not None else None
        if not valid_task_id(task_id):
            raise ProviderError(self.error_message(body, 200))
        return Created(task_id=task_id)

    def status_request(self, task_id: str) -> ProviderRequest:
        return ProviderRequest(method="GET", path="/status", params={"uuid": task_id})

    def parse_status(self, body: Any, task_id: str) -> Update:
        data = _unwrap(body)
        raw_status = as_str(data.get("status")) if data is not None else None
        if data is None or raw_status is None:
            raise UnparseablePayload("aivideoapi status answer has no status")
        status = _STATUSES.get(raw_status.lower(), Status.QUEUED)
        error = as_str(data.get("error")) or as_str(data.get("message"))
        return Update(
            status=status,
            raw_status=raw_status,
            task_id=as_str(data.get("uuid")) or task_id,
            progress=1.0 if status is Status.SUCCEEDED else progress(data.get("progress")),
            result_url=as_str(data.get("url")),
            preview_url=as_str(data.get("gif_url")),
            error=error if status is Status.FAILED else None,
            payload=data,
        )
