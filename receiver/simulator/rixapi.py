"""Simulated rixapi "Runway reverse": /runway/pro/{generate,video2video,act_one} and /runway/feed.

Callbacks are POSTed to `callback_url` on every status change, as the bare `data` object
of a feed answer with every value a string (or wrapped in `{code, msg, data}` when the
`wrapped` option is on). Statuses: "0" queued, "1" running, "2" failed and refunded,
"3" succeeded.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, Router, post

from receiver.simulator.core import Outgoing, Phase, SimTask
from receiver.simulator.http import (
    AnyRequest,
    bearer_key,
    create_refusal,
    json_object,
    key_guard,
    media_url,
    received,
    simulator_of,
)

__all__ = ["render", "router", "wrap"]

_PROVIDER = "rixapi"
_FAILURE = "生成失败 (generation failed; credits refunded)"
_STATUS = {Phase.QUEUED: "0", Phase.RUNNING: "1", Phase.FAILED: "2", Phase.SUCCEEDED: "3"}
# The body fields each create endpoint requires, besides callback_url.
_REQUIRED = {
    "generate": ("prompt",),
    "video2video": ("video",),
    "act_one": ("video", "image"),
}


def _error(status_code: int, message: str) -> Response[Any]:
    return Response({"code": status_code, "msg": message, "data": None}, status_code=status_code)


def _wrap(data: dict[str, Any] | None) -> dict[str, Any]:
    return {"code": 200, "msg": "成功", "data": data, "exec_time": 0.05}


def _render(task: SimTask, phase: Phase, progress: int) -> dict[str, str]:
    """The feed answer's `data` object: every value a string, Unix times included."""
    poster = (task.preview_url or "") if phase is Phase.SUCCEEDED else ""
    return {
        "task_id": task.task_id,
        "status": _STATUS[phase],
        "video_url": (task.result_url or "") if phase is Phase.SUCCEEDED else "",
        "poster": poster,
        "last_frame": poster.replace(".jpg", "-last.jpg"),
        "msg": _FAILURE if phase is Phase.FAILED else "",
        "refund": "1" if phase is Phase.FAILED else "0",
        "create_time": str(int(task.created_at)),
        "update_time": str(int(task.updated_at)),
    }


def _script(task: SimTask, phase: Phase, progress: int) -> Outgoing | None:
    if phase is Phase.QUEUED or not task.callback_url:
        return None
    data = _render(task, phase, progress)
    return Outgoing("POST", task.callback_url, _wrap(data) if task.config.wrapped else data)


@post("/runway/pro/{endpoint:str}", status_code=200)
async def create(request: AnyRequest) -> Response[Any]:
    endpoint = request.path_params["endpoint"]
    required = _REQUIRED.get(endpoint)
    if required is None:
        return _error(404, f"no such endpoint: {endpoint}")
    if (refusal := create_refusal(request, _error)) is not None:
        return refusal
    body = await json_object(request)
    if body is None:
        return _error(400, "the body must be a JSON object")
    missing = [name for name in ("callback_url", *required) if not body.get(name)]
    if missing:
        return _error(400, f"{missing[0]} is required")
    sim = simulator_of(request)
    task = sim.add(
        _PROVIDER,
        callback_url=body["callback_url"],
        result_url=media_url(request, "mp4"),
        request=received(body),
        preview_url=media_url(request, "jpg"),
    )
    sim.start(task, _script)
    await sim.hold_answer(task)
    return Response(_wrap({"task_id": task.task_id}))


@post("/runway/feed", status_code=200)
async def feed(request: AnyRequest) -> Response[Any]:
    body = await json_object(request)
    task_id = body.get("task_id") if body is not None else None
    task = simulator_of(request).status_of(_PROVIDER, str(task_id))
    if task is None:
        return _error(404, "task not found")
    return Response(_wrap(_render(task, task.status, task.progress)))


router = Router(
    path=f"/{_PROVIDER}",
    route_handlers=[create, feed],
    before_request=key_guard(_PROVIDER, bearer_key, _error, "invalid token"),
)

# Public names for receiver.simulator.payloads: the same bodies, without a running simulator.
render = _render
wrap = _wrap
