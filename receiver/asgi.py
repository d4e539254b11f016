"""The ASGI types, defined once for every module that speaks raw ASGI.

Plain aliases, as the ASGI spec describes its messages (mappings of str to anything): the
receiver's own raw-ASGI code (the app, the hook routes, the benchmark floor) needs no more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
