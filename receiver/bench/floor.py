"""The stack's floor: an ASGI app that reads the body and answers 200, on the receiver's uvicorn.

`python -m receiver.bench.floor PORT` serves it with the same uvicorn options and the same
way of writing answers (receiver.one_write) as `receiver serve`, so the ratio of the two
measures the receiver's own cost.
"""

from __future__ import annotations

import sys

from receiver.asgi import Receive, Scope, Send

__all__ = ["app", "main"]

_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, answer `{"ok":true}`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def main() -> None:
    import uvicorn

    from receiver.cli.serve import UVICORN_OPTIONS
    from receiver.one_write import OneWriteProtocol

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        http=OneWriteProtocol,  # the receiver's own way of writing answers
        **UVICORN_OPTIONS,
    )


if __name__ == "__main__":
    main()
