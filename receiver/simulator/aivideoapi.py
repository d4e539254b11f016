"""Simulated aivideoapi: /runway/generate/*, /runway/extend and GET /status?uuid=.

When a job ends, success or not, one bodiless GET goes to `callback_url + "?uuid=" + uuid`
by plain concatenation, as documented: a callback_url that already has a query gets a
second "?". Nothing else is ever sent; the truth is in /status.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, Router, get, post

from receiver.simulator.core import Outgoing, Phase, SimTask
from receiver.simulator.http import (
    AnyRequest,
    create_refusal,
    header_key,
    json_object,
    key_guard,
    media_url,
    received,
    simulator_of,
)

__all__ = ["render", "router"]

_PROVIDER = "aivideoapi"
_STATUS = {
    Phase.QUEUED: "in queue",
    Phase.RUNNING: "submitted",
    Phase.SUCCEEDED: "success",
    Phase.FAILED: "failed",
}
# The body fields each create endpoint requires; extend's are not documented.
_REQUIRED = {
    "text": ("text_prompt",),
    "image": ("image_prompt",),
    "imageDescription": ("text_prompt", "image_prompt"),
    "video": ("text_prompt", "video_prompt"),
    "extend": (),
}


def _error(status_code: int, message: str) -> Response[Any]:
    return Response({"message": message}, status_code=status_code)


def _render(task: SimTask, phase: Phase, progress: int) -> dict[str, Any]:
    """The /status answer: progress is null while queued, a 0..1 number after."""
    done = phase is Phase.SUCCEEDED
    return {
        "uuid": task.task_id,
        "status": _STATUS[phase],
        "progress": None if phase is Phase.QUEUED else progress / 100,
        "url": task.result_url if done else None,
        "gif_url": task.preview_url if done else None,
    }


def _script(task: SimTask, phase: Phase, progress: int) -> Outgoing | None:
    if phase not in (Phase.SUCCEEDED, Phase.FAILED) or not task.callback_url:
        return None
    # Documented: plain concatenation, whatever the callback_url already holds.
    return Outgoing("GET", task.callback_url + "?uuid=" + task.task_id)


async def _create(request: AnyRequest, kind: str) -> Response[Any]:
    if (refusal := create_refusal(request, _error)) is not None:
        return refusal
    body = await json_object(request)
    if body is None:
        return _error(400, "The body must be a JSON object")
    missing = [name for name in _REQUIRED[kind] if not body.get(name)]
    if missing:
        return _error(400, f"{missing[0]} is required")
    sim = simulator_of(request)
    task = sim.add(
        _PROVIDER,
        callback_url=body.get("callback_url") or None,
        result_url=media_url(request, "mp4"),
        request=received(body),
        preview_url=media_url(request, "gif"),
    )
    sim.start(task, _script)
    await sim.hold_answer(task)
    return Response({"uuid": task.task_id})


@post("/runway/generate/{kind:str}", status_code=200)
async def generate(request: AnyRequest) -> Response[Any]:
    kind = request.path_params["kind"]
    if kind not in _REQUIRED or kind == "extend":
        return _error(404, "Not Found")
    return await _create(request, kind)


@post("/runway/extend", status_code=200)
async def extend(request: AnyRequest) -> Response[Any]:
    return await _create(request, "extend")


@get("/status")
async def status(request: AnyRequest) -> Response[Any]:
    task = simulator_of(request).status_of(_PROVIDER, request.query_params.get("uuid", ""))
    if task is None:
        return _error(404, "Task not found")
    return Response(_render(task, task.status, task.progress))


router = Router(
    path=f"/{_PROVIDER}",
    route_handlers=[generate, extend, status],
    before_request=key_guard(_PROVIDER, header_key("authorization"), _error),
)

# Public names for receiver.simulator.payloads: the same bodies, without a running simulator.
render = _render
