"""The simulator's own routes under /_sim: steer its config, list its tasks, serve result media."""

from __future__ import annotations

import mimetypes
from typing import Any

import msgspec
from litestar import Response, Router, get, post

from receiver.simulator.config import SimConfig, update_config
from receiver.simulator.core import TaskInfo
from receiver.simulator.http import AnyRequest, json_object, simulator_of

__all__ = ["MEDIA", "router"]

# A few bytes per media type, each starting with its format's signature.
MEDIA = {
    ".mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    ".gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    ".jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xff\xd9",
    ".mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00",
}


@get("/config")
async def read_config(request: AnyRequest) -> SimConfig:
    return simulator_of(request).config


@post("/config", status_code=200)
async def change_config(request: AnyRequest) -> Response[Any]:
    """Apply a partial update: `{"fail": true}` changes only `fail`."""
    patch = await json_object(request)
    if patch is None:
        return Response({"error": "the body must be a JSON object"}, status_code=400)
    try:
        config = update_config(simulator_of(request).config, patch)
    except msgspec.ValidationError as exc:
        return Response({"error": str(exc)}, status_code=400)
    return Response(config)


@get("/tasks")
async def list_tasks(request: AnyRequest) -> list[TaskInfo]:
    return simulator_of(request).tasks()


@get("/media/{name:str}")
async def media(request: AnyRequest) -> Response[bytes]:
    """A stand-in for a result file: any name with a known extension serves a few bytes
    (unless it is a link that `expire_results` made expire)."""
    name = request.path_params["name"]
    expired = simulator_of(request).expired(name)
    if expired is not None:
        return Response(b"link expired", status_code=expired, media_type="text/plain")
    extension = "." + name.rpartition(".")[2].lower()
    if extension not in MEDIA:
        return Response(b"not found", status_code=404, media_type="text/plain")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(MEDIA[extension], media_type=media_type)


router = Router(path="/_sim", route_handlers=[read_config, change_config, list_tasks, media])
