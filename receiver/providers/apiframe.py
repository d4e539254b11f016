"""apiframe: POST /runway-imagine; callbacks echo our secret in x-webhook-secret.

Quirk: `percentage` is the number 100 in one documented example and the string "40"
in another. Statuses: `processing` and `finished` documented, `failed` observed in
clients; anything else is read as queued, never as an error.
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

__all__ = ["Apiframe"]

_STATUSES = {
    "processing": Status.RUNNING,
    "finished": Status.SUCCEEDED,
    "completed": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "error": Status.FAILED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
}

_CREATE_FIELDS = (
    "prompt",
    "generation_type",
    "image_url",
    "end_image_url",
    "video_url",
    "aspect_ratio",
    "model",
    "duration",
    "flip",
)


class Apiframe(Provider):
    name: ClassVar[str] = "apiframe"
    input_fields: ClassVar[tuple[str, ...]] = _CREATE_FIELDS

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        return ("prompt",)

    callback_style: ClassVar[CallbackStyle] = CallbackStyle.SECRET_POST

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": api_key}  # the bare key: apiframe does not use "Bearer"

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        body = {key: fields[key] for key in _CREATE_FIELDS if fields.get(key) is not None}
        body.setdefault("generation_type", "text2video")
        if hook_url is not None:
            body["webhook_url"] = hook_url
        if webhook_secret is not None:
            body["webhook_secret"] = webhook_secret
        return ProviderRequest(method="POST", path="/runway-imagine", json=body)

    def common_request(self, common: Mapping[str, Any]) -> dict[str, Any]:
        image = common.get("image_url")
        fields = {
            "prompt": common.get("prompt"),
            "generation_type": "image2video" if image else "text2video",
            "image_url": image,
            "duration": common.get("duration"),
            "model": common.get("model"),
            # Documented for text2video only: the image sets the frame otherwise.
            "aspect_ratio": None if image else common.get("ratio"),
        }
        return {key: value for key, value in fields.items() if value is not None}

    def parse_created(self, body: Any) -> Created:
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not valid_task_id(task_id):
            raise ProviderError(self.error_message(body, 200))
        return Created(task_id=task_id)

    def parse_callback(self, body: dict[str, Any]) -> Update:
        return self._update(body)

    def status_request(self, task_id: str) -> ProviderRequest:
        return ProviderRequest(method="POST", path="/fetch", json={"task_id": task_id})

    def parse_status(self, body: Any, task_id: str) -> Update:
        if not isinstance(body, dict):
            raise UnparseablePayload("apiframe fetch answer is not an object")
        return self._update(body)

    def _update(self, body: dict[str, Any]) -> Update:
        raw_status = as_str(body.get("status"))
        if raw_status is None:
            raise UnparseablePayload("apiframe body has no status")
        status = _STATUSES.get(raw_status.lower(), Status.QUEUED)
        task_id = as_str(body.get("task_id"))
        error = as_str(body.get("message")) or as_str(body.get("error"))
        return Update(
            status=status,
            raw_status=raw_status,
            task_id=task_id,
            progress=1.0
            if status is Status.SUCCEEDED
            else progress(body.get("percentage"), percent=True),
            result_url=as_str(body.get("video_url")),
            error=error if status is Status.FAILED else None,
            payload=body,
        )
