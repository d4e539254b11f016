"""Litestar helpers the simulated providers share: key checks, JSON bodies, media URLs."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from litestar import Request, Response

from receiver.simulator.config import update_config
from receiver.simulator.core import Simulator

__all__ = [
    "AnyRequest",
    "ErrorResponse",
    "bearer_key",
    "create_refusal",
    "header_key",
    "json_object",
    "key_guard",
    "media_url",
    "received",
    "simulator_of",
]

AnyRequest = Request[Any, Any, Any]
# A provider's error answer in its own style, from an HTTP status and a message.
ErrorResponse = Callable[[int, str], Response[Any]]
KeyReader = Callable[[AnyRequest], str | None]


def simulator_of(request: AnyRequest) -> Simulator:
    """The simulator behind the app that serves `request`."""
    return cast(Simulator, request.app.state.simulator)


async def json_object(request: AnyRequest) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        value = msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def bearer_key(request: AnyRequest) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None for any other scheme."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def header_key(name: str) -> KeyReader:
    """Read the key from a header as it is (no scheme)."""

    def read(request: AnyRequest) -> str | None:
        return request.headers.get(name)

    return read


def key_guard(
    provider: str, read_key: KeyReader, error: ErrorResponse, message: str = "Invalid API key"
) -> Callable[[AnyRequest], Awaitable[Response[Any] | None]]:
    """A `before_request` hook that answers 401 in the provider's style to a wrong key."""

    async def check(request: AnyRequest) -> Response[Any] | None:
        if simulator_of(request).authorized(provider, read_key(request)):
            return None
        return error(401, message)

    return check


def create_refusal(request: AnyRequest, error: ErrorResponse) -> Response[Any] | None:
    """The configured `create_error` answer, or None when create calls should succeed.

    Every create route starts here, so this also counts the create calls per provider.
    """
    sim = simulator_of(request)
    provider = request.scope["path"].lstrip("/").split("/", 1)[0]
    sim.create_calls[provider] += 1
    config = sim.config
    status_code, retry_after = config.create_error, config.create_retry_after
    if status_code is None:
        return None
    if config.create_error_times is not None:
        if config.create_error_times <= 1:
            update_config(config, {"create_error": None, "create_error_times": None})
        else:
            update_config(config, {"create_error_times": config.create_error_times - 1})
    answer = error(status_code, f"Simulated error {status_code}")
    if retry_after is not None:
        answer.headers["Retry-After"] = str(retry_after)
    return answer


def received(body: dict[str, Any]) -> dict[str, Any]:
    """A create body as the simulator shows it (GET /_sim/tasks): the secret left out."""
    return {key: value for key, value in body.items() if key != "webhook_secret"}


def media_url(request: AnyRequest, extension: str) -> str:
    """A fresh result URL served by this simulator, as the caller reached it."""
    base = str(request.base_url).rstrip("/")
    return f"{base}/_sim/media/{uuid.uuid4().hex}.{extension}"
