"""rixapi: the aggregator's "Runway reverse" endpoints; POSTs to callback_url on every change.

Quirks: every value may be a string ("3", "1700000000"); callbacks come bare (the `data`
object of a feed answer) or wrapped in `{code, msg, data}`; newer builds add a `state`
word that is more precise than the numeric `status` and wins when present.
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
from receiver.providers.coerce import as_float, as_str, progress

__all__ = ["Rixapi"]

_ENDPOINTS = {
    "generate": "/runway/pro/generate",
    "video2video": "/runway/pro/video2video",
    "act_one": "/runway/pro/act_one",
}

_CREATE_FIELDS = ("prompt", "model", "ratio", "style", "options", "image", "video")

# "2" (failed, refunded) and "3" (succeeded) are documented; "0" and "1" are assumed.
_STATUSES = {
    "0": Status.QUEUED,
    "1": Status.RUNNING,
    "2": Status.FAILED,
    "3": Status.SUCCEEDED,
}

_STATES = {
    "pending": Status.QUEUED,
    "running": Status.RUNNING,
    "succeeded": Status.SUCCEEDED,
    "error": Status.FAILED,
}


# endpoint -> the fields it cannot do without (besides callback_url, always filled in)
_REQUIRED = {
    "generate": ("prompt",),
    "video2video": ("video",),
    "act_one": ("video", "image"),
}


def _endpoint(fields: Mapping[str, Any]) -> str:
    return _ENDPOINTS[_endpoint_name(fields)]


def _endpoint_name(fields: Mapping[str, Any]) -> str:
    name = fields.get("endpoint")
    if name is None:
        if fields.get("video") and fields.get("image"):
            name = "act_one"
        elif fields.get("video"):
            name = "video2video"
        else:
            name = "generate"
    if name not in _ENDPOINTS:
        raise ProviderError(f"rixapi has no endpoint {name!r}; use one of {sorted(_ENDPOINTS)}")
    return str(name)


def _status_key(value: Any) -> str | None:
    """The numeric status as its canonical text: "3", 3 and "3.0" all read as "3"."""
    text = as_str(value)
    number = as_float(text)
    if number is not None and number.is_integer():
        return str(int(number))
    return text


class Rixapi(Provider):
    name: ClassVar[str] = "rixapi"
    callback_style: ClassVar[CallbackStyle] = CallbackStyle.POST
    input_fields: ClassVar[tuple[str, ...]] = ("endpoint", *_CREATE_FIELDS)

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        return _REQUIRED[_endpoint_name(fields)]

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        body = {key: fields[key] for key in _CREATE_FIELDS if fields.get(key) is not None}
        if hook_url is not None:
            body["callback_url"] = hook_url
        return ProviderRequest(method="POST", path=_endpoint(fields), json=body)

    def common_request(self, common: Mapping[str, Any]) -> dict[str, Any]:
        duration = common.get("duration")
        fields = {
            "endpoint": "generate",
            "prompt": common.get("prompt"),
            "ratio": common.get("ratio"),
            "model": common.get("model"),
            "image": common.get("image_url"),
            "options": {"seconds": duration} if duration is not None else None,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def parse_created(self, body: Any) -> Created:
        data = self._unwrap(body) or {}
        task_id = data.get("task_id")
        if not valid_task_id(task_id):
            raise ProviderError(f"rixapi answered without a usable task id: {self._msg(body)}")
        return Created(task_id=task_id)

    def parse_callback(self, body: dict[str, Any]) -> Update:
        # Bare `data` objects are what clients observe; the wrapped form is accepted too,
        # unless its `code` says the wrapper reports a failure rather than a task.
        if "status" not in body and "state" not in body and isinstance(body.get("data"), dict):
            code = _status_key(body.get("code"))
            if code is not None and code != "200":
                raise UnparseablePayload(f"rixapi callback wrapped with code {code}")
            body = body["data"]
        return self._update(body)

    def status_request(self, task_id: str) -> ProviderRequest:
        return ProviderRequest(method="POST", path="/runway/feed", json={"task_id": task_id})

    def parse_status(self, body: Any, task_id: str) -> Update:
        data = self._unwrap(body)
        if data is None:
            raise UnparseablePayload("rixapi feed answer has no data object")
        return self._update(data)

    def _unwrap(self, body: Any) -> dict[str, Any] | None:
        """The `data` object of a `{code, msg, data}` answer, or None when there is none.

        The API call's outcome is in the body (HTTP 200 can carry `{"code": 500, ...}`),
        so a code other than 200 is a ProviderError.
        """
        if not isinstance(body, dict):
            return None
        code = _status_key(body.get("code"))
        if code is not None and code != "200":
            raise ProviderError(f"rixapi refused the request: {self._msg(body)}")
        data = body.get("data")
        return data if isinstance(data, dict) else None

    def _msg(self, body: Any) -> str:
        if isinstance(body, dict):
            code, msg = as_str(body.get("code")), as_str(body.get("msg"))
            return f"code {code or '?'}: {msg or 'no message'}"
        return "not an object"

    def _update(self, data: dict[str, Any]) -> Update:
        state = as_str(data.get("state"))
        number = _status_key(data.get("status"))
        if state is not None and state.lower() in _STATES:
            raw_status, status = state, _STATES[state.lower()]
        elif number is not None:
            raw_status, status = number, _STATUSES.get(number, Status.QUEUED)
        elif state is not None:
            raw_status, status = state, Status.QUEUED
        else:
            raise UnparseablePayload("rixapi body has neither status nor state")
        succeeded = status is Status.SUCCEEDED
        return Update(
            status=status,
            raw_status=raw_status,
            task_id=as_str(data.get("task_id")),
            progress=1.0 if succeeded else progress(data.get("progress")),
            result_url=as_str(data.get("video_url")),
            preview_url=as_str(data.get("poster")) or as_str(data.get("last_frame")),
            error=as_str(data.get("msg")) if status is Status.FAILED else None,
            payload=data,
        )
