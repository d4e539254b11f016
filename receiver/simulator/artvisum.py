"""Simulated artvisum: /runway/{text,image,image-desc,video,extend} and GET /status/{uuid}.

It never calls back. Uploads are checked against the documented limits (images under
10 MB, videos under 100 MB in MP4, MOV or AVI). Only `completed` is a documented job
status; the simulator says `pending`, `processing` and `failed` before and beside it.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, NamedTuple

from litestar import Response, Router, get, post
from litestar.datastructures import UploadFile

from receiver.simulator.core import Outgoing, Phase, SimTask
from receiver.simulator.http import (
    AnyRequest,
    create_refusal,
    header_key,
    json_object,
    key_guard,
    media_url,
    simulator_of,
)

__all__ = ["render", "router"]

_PROVIDER = "artvisum"
_FAILURE = "Generation failed: the input was rejected by moderation"
_MB = 1024 * 1024
_STATUS = {
    Phase.QUEUED: "pending",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "completed",
    Phase.FAILED: "failed",
}


class _Upload(NamedTuple):
    field: str
    limit: int
    suffixes: frozenset[str] | None  # None: any format


_IMAGE = _Upload("image", 10 * _MB, None)
_VIDEO = _Upload("video", 100 * _MB, frozenset({".mp4", ".mov", ".avi"}))
# endpoint -> (its file upload, if any; its required text fields)
_ENDPOINTS: dict[str, tuple[_Upload | None, tuple[str, ...]]] = {
    "text": (None, ("prompt",)),
    "image": (_IMAGE, ()),
    "image-desc": (_IMAGE, ("prompt",)),
    "video": (_VIDEO, ()),
    "extend": (_VIDEO, ()),
}


def _error(status_code: int, message: str) -> Response[Any]:
    return Response({"status": "error", "message": message, "data": None}, status_code=status_code)


def _render(task: SimTask, phase: Phase, progress: int) -> dict[str, Any]:
    """The /status answer: the outer status is the API call's, `data.status` the job's."""
    done = phase is Phase.SUCCEEDED
    message = f"Task failed: {_FAILURE}" if phase is Phase.FAILED else f"Task {_STATUS[phase]}"
    return {
        "status": "success",
        "message": message,
        "data": {
            "status": _STATUS[phase],
            "progress": progress,
            "url": task.result_url if done else None,
            "preview_url": task.preview_url if done else None,
        },
    }


def _script(task: SimTask, phase: Phase, progress: int) -> Outgoing | None:
    return None  # artvisum never calls back: results come only by polling /status


async def _fields(request: AnyRequest) -> dict[str, Any] | None:
    """The request's fields, from a JSON body or a (multipart) form."""
    if request.headers.get("content-type", "").startswith("application/json"):
        return await json_object(request)
    form = await request.form()
    return {key: form.get(key) for key in form}


async def _check_upload(upload: _Upload, value: Any) -> str | None:
    """Why an upload breaks the documented limits, or None when it is fine."""
    if not isinstance(value, UploadFile):
        return f"{upload.field} file is required"
    if (
        upload.suffixes is not None
        and PurePath(value.filename).suffix.lower() not in upload.suffixes
    ):
        return "Supported formats: MP4, MOV, AVI"
    if len(await value.read()) >= upload.limit:
        return f"{upload.field.capitalize()} file should be less than {upload.limit // _MB}MB"
    return None


@post("/runway/{endpoint:str}", status_code=200)
async def create(request: AnyRequest) -> Response[Any]:
    endpoint = request.path_params["endpoint"]
    if endpoint not in _ENDPOINTS:
        return _error(404, "Endpoint not found")
    if (refusal := create_refusal(request, _error)) is not None:
        return refusal
    fields = await _fields(request)
    if fields is None:
        return _error(400, "The body must be a JSON object or a form")
    upload, required = _ENDPOINTS[endpoint]
    try:
        problem = await _check_upload(upload, fields.get(upload.field)) if upload else None
    finally:
        for value in fields.values():
            if isinstance(value, UploadFile):
                await value.close()
    missing = [name for name in required if not fields.get(name)]
    if problem is not None or missing:
        return _error(400, problem or f"{missing[0]} is required")
    sim = simulator_of(request)
    task = sim.add(
        _PROVIDER, result_url=media_url(request, "mp4"), preview_url=media_url(request, "gif")
    )
    sim.start(task, _script)
    await sim.hold_answer(task)
    body = {"uuid": task.task_id}
    return Response({"status": "success", "message": "Task created successfully", "data": body})


@get("/status/{uuid:str}")
async def status(request: AnyRequest) -> Response[Any]:
    task = simulator_of(request).status_of(_PROVIDER, request.path_params["uuid"])
    if task is None:
        return _error(404, "Task not found")
    return Response(_render(task, task.status, task.progress))


router = Router(
    path=f"/{_PROVIDER}",
    route_handlers=[create, status],
    before_request=key_guard(_PROVIDER, header_key("x-api-key"), _error),
)

# Public names for receiver.simulator.payloads: the same bodies, without a running simulator.
render = _render
