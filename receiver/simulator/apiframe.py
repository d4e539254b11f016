"""Simulated apiframe: POST /runway-imagine, /fetch and /fetch-many; webhooks with the secret.

As documented, progress posts carry `percentage` as a string ("40") and the final post
as a number (100); `webhook_secret` comes back in the `x-webhook-secret` header.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, Router, post

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

_PROVIDER = "apiframe"
_FAILURE = "Video generation failed: the prompt was flagged by the content filter"
_GENERATION_TYPES = frozenset({"text2video", "image2video", "video2video"})


def _error(status_code: int, message: str) -> Response[Any]:
    return Response({"message": message}, status_code=status_code)


def _render(task: SimTask, phase: Phase, progress: int) -> dict[str, Any]:
    """The fetch result (and webhook body) for a task at `phase`."""
    body: dict[str, Any] = {"task_id": task.task_id, "task_type": "runway"}
    if phase is Phase.SUCCEEDED:
        body.update(status="finished", percentage=100, video_url=task.result_url)
    elif phase is Phase.FAILED:
        body.update(status="failed", message=_FAILURE)
    else:
        # Documented quirk: a job in progress reports its percentage as a string.
        body.update(status="processing", percentage=str(progress))
    return body


def _script(task: SimTask, phase: Phase, progress: int) -> Outgoing | None:
    if not task.callback_url:
        return None
    headers = {"x-webhook-secret": task.secret} if task.secret else None
    return Outgoing("POST", task.callback_url, _render(task, phase, progress), headers)


@post("/runway-imagine", status_code=200)
async def imagine(request: AnyRequest) -> Response[Any]:
    if (refusal := create_refusal(request, _error)) is not None:
        return refusal
    body = await json_object(request)
    if body is None:
        return _error(400, "The body must be a JSON object")
    if not body.get("prompt"):
        return _error(400, "prompt is required")
    if body.get("generation_type") not in _GENERATION_TYPES:
        return _error(400, "generation_type must be text2video, image2video or video2video")
    sim = simulator_of(request)
    task = sim.add(
        _PROVIDER,
        callback_url=body.get("webhook_url") or None,
        secret=body.get("webhook_secret") or None,
        result_url=media_url(request, "mp4"),
        request=received(body),
    )
    sim.start(task, _script)
    await sim.hold_answer(task)
    return Response({"task_id": task.task_id})


@post("/fetch", status_code=200)
async def fetch(request: AnyRequest) -> Response[Any]:
    body = await json_object(request)
    task_id = body.get("task_id") if body is not None else None
    task = simulator_of(request).status_of(_PROVIDER, str(task_id))
    if task is None:
        return _error(404, "Task not found")
    return Response(_render(task, task.status, task.progress))


@post("/fetch-many", status_code=200)
async def fetch_many(request: AnyRequest) -> Response[Any]:
    body = await json_object(request)
    task_ids = body.get("task_ids") if body is not None else None
    if not isinstance(task_ids, list) or not 2 <= len(task_ids) <= 20:
        return _error(400, "task_ids must be a list of 2 to 20 task ids")
    sim = simulator_of(request)
    found = (sim.status_of(_PROVIDER, str(task_id)) for task_id in task_ids)
    tasks = [_render(task, task.status, task.progress) for task in found if task is not None]
    return Response({"tasks": tasks})


router = Router(
    path=f"/{_PROVIDER}",
    route_handlers=[imagine, fetch, fetch_many],
    before_request=key_guard(_PROVIDER, header_key("authorization"), _error),
)

# Public names for receiver.simulator.payloads: the same bodies, without a running simulator.
render = _render
