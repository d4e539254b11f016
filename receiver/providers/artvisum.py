"""artvisum: uploads local image or video files; no callbacks, results only by polling /status.

Quirks: the outer `status` of every answer is the API call's ("success"), not the job's;
the job's is `data.status`, and `completed` is the only value documented.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

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

__all__ = ["Artvisum"]

_MB = 1024 * 1024
_IMAGE_LIMIT = 10 * _MB  # documented: "less than 10MB"
_VIDEO_LIMIT = 100 * _MB  # documented: "less than 100MB"
_VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi"})


class _Endpoint(NamedTuple):
    """One create endpoint: its path, the file it uploads (if any) and its text fields."""

    path: str
    file_field: str | None
    text_fields: tuple[str, ...]


_ENDPOINTS = {
    "text": _Endpoint("/runway/text", None, ("prompt", "negative_prompt")),
    "image": _Endpoint("/runway/image", "image", ("negative_prompt",)),
    "image-desc": _Endpoint("/runway/image-desc", "image", ("prompt", "negative_prompt")),
    "video": _Endpoint("/runway/video", "video", ("negative_prompt",)),
    "extend": _Endpoint("/runway/extend", "video", ("negative_prompt",)),
}

_STATUSES = {
    "completed": Status.SUCCEEDED,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "error": Status.FAILED,
    "processing": Status.RUNNING,
    "running": Status.RUNNING,
    "in_progress": Status.RUNNING,
    "pending": Status.QUEUED,
    "queued": Status.QUEUED,
    "in queue": Status.QUEUED,
}


def _endpoint(fields: Mapping[str, Any]) -> _Endpoint:
    name = fields.get("endpoint")
    if name is None:
        if fields.get("video"):
            name = "video"
        elif fields.get("image") and fields.get("prompt"):
            name = "image-desc"
        elif fields.get("image"):
            name = "image"
        else:
            name = "text"
    if name not in _ENDPOINTS:
        raise ProviderError(f"artvisum has no endpoint {name!r}; use one of {sorted(_ENDPOINTS)}")
    return _ENDPOINTS[name]


def _upload(field: str, value: Any) -> tuple[str, bytes, str]:
    """Read a local file for upload, enforcing the documented size and format limits first."""
    if not isinstance(value, (str, os.PathLike)):
        raise ProviderError(f"artvisum {field} must be a local file path")
    path = Path(value)
    limit = _VIDEO_LIMIT if field == "video" else _IMAGE_LIMIT
    if field == "video" and path.suffix.lower() not in _VIDEO_SUFFIXES:
        raise ProviderError(f"artvisum takes MP4, MOV or AVI videos, not {path.name!r}")
    try:
        if path.stat().st_size >= limit:
            raise ProviderError(f"artvisum {field} must be under {limit // _MB} MB: {path.name!r}")
        content = path.read_bytes()
    except OSError as exc:
        raise ProviderError(f"artvisum {field} cannot be read: {exc.strerror}") from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, content, content_type


class Artvisum(Provider):
    name: ClassVar[str] = "artvisum"
    callback_style: ClassVar[CallbackStyle] = CallbackStyle.POLL
    file_fields: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    input_fields: ClassVar[tuple[str, ...]] = (
        "endpoint",
        "prompt",
        "negative_prompt",
        "image",
        "video",
    )

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        endpoint = _endpoint(fields)
        upload = (endpoint.file_field,) if endpoint.file_field else ()
        return upload + (("prompt",) if "prompt" in endpoint.text_fields else ())

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        endpoint = _endpoint(fields)
        text = {key: fields[key] for key in endpoint.text_fields if fields.get(key) is not None}
        if endpoint.file_field is None:
            return ProviderRequest(method="POST", path=endpoint.path, json=text)
        upload = _upload(endpoint.file_field, fields.get(endpoint.file_field))
        return ProviderRequest(
            method="POST",
            path=endpoint.path,
            data={key: str(value) for key, value in text.items()},
            files={endpoint.file_field: upload},
        )

    def parse_created(self, body: Any) -> Created:
        data = self._data(body) or {}
        task_id = data.get("uuid")
        if not valid_task_id(task_id):
            raise ProviderError("artvisum answered without a usable uuid")
        return Created(task_id=task_id)

    def status_request(self, task_id: str) -> ProviderRequest:
        return ProviderRequest(method="GET", path=f"/status/{task_id}")

    def parse_status(self, body: Any, task_id: str) -> Update:
        # An outer status other than "success" says the status call failed, not the job:
        # it raises (ProviderError, from _data) instead of ending the job as failed, so a
        # transient refusal cannot make a running job terminal.
        data = self._data(body)
        raw_status = as_str(data.get("status")) if data is not None else None
        if data is None or raw_status is None:
            raise UnparseablePayload("artvisum status answer has no data.status")
        fraction = progress(data.get("progress"), percent=True)
        # Only `completed` is documented: an unknown word is running once progress has moved.
        status = _STATUSES.get(raw_status.lower()) or (
            Status.RUNNING if fraction else Status.QUEUED
        )
        error = as_str(data.get("error")) or as_str(data.get("message")) or self._message(body)
        return Update(
            status=status,
            raw_status=raw_status,
            task_id=as_str(data.get("uuid")) or task_id,
            progress=1.0 if status is Status.SUCCEEDED else fraction,
            result_url=as_str(data.get("url")),
            preview_url=as_str(data.get("preview_url")),
            error=error if status is Status.FAILED else None,
            payload=body,
        )

    def _data(self, body: Any) -> dict[str, Any] | None:
        """The `data` object of an answer, or None; ProviderError when the API call failed."""
        if not isinstance(body, dict):
            return None
        if as_str(body.get("status")) != "success":
            raise ProviderError(f"artvisum refused the request: {self._message(body)}")
        data = body.get("data")
        return data if isinstance(data, dict) else None

    def _message(self, body: dict[str, Any]) -> str:
        return as_str(body.get("message")) or as_str(body.get("status")) or "no message"
