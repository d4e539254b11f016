"""The hook routes' own cost, without HTTP: callbacks handed straight to the ASGI app.

    python deploy/bench/inprocess.py [N] [--token | --rixapi | --signed] [--no-loops] [--profile]

Builds the app on a fresh SQLite file with the benchmark's no-op handler, then passes N
apiframe callbacks, 50 at a time, to the app as uvicorn would (scope, receive, send), and
waits until every delivery has run. `--token` posts each to its own job's URL
(`/hooks/apiframe/{token}` with the job's secret, jobs made beforehand) instead of the
static route; `--rixapi` posts rixapi's unauthenticated progress callbacks to their jobs'
URLs (`/hooks/rixapi/{token}`, no secret: the token is the credential); `--signed` posts
Standard Webhooks messages, a new task each, to the generic provider `receiver bench`
declares (`/hooks/stdhooks`), signed before the clock starts, so the signing (which the
bench's own generator does during its load) is not counted;
`--no-loops` leaves the dispatcher off (ingest alone); `--profile` prints cProfile's top
functions. Prints callbacks per second and CPU per callback (every thread of the process).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from receiver.bench.routes import route_env

CONCURRENCY = 50
SECRET = "bench-secret"


def scope(
    path: str, body: bytes, secret: str | None, signed: dict[str, str] | None = None
) -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if secret is not None:
        headers.append((b"x-webhook-secret", secret.encode()))
    for name, value in (signed or {}).items():
        headers.append((name.lower().encode(), value.encode()))
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "client": ("127.0.0.1", 5555),
        "headers": headers,
    }


def rixapi_body(task_id: str) -> bytes:
    """A rixapi progress callback, as its document shows one."""
    return f'{{"task_id":"{task_id}","status":"1","progress":"50"}}'.encode()


async def main(count: int, *, style: str, loops: bool, profile: bool) -> None:
    from receiver.app import create_app
    from receiver.bench.load import callback_body
    from receiver.bench.routes import SIGNED_PROVIDER, signed_message, signing_secret
    from receiver.store.base import NewJob
    from receiver.submit import queued_job
    from receiver.verify import digest

    app = create_app(run_loops=loops)
    provider = {"rixapi": "rixapi", "signed": SIGNED_PROVIDER}.get(style, "apiframe")
    # Signed before the clock starts: what is timed is the receiver's work alone.
    whsec = signing_secret(SECRET)
    messages = [signed_message(whsec, f"t-{n}") for n in range(count)] if style == "signed" else []

    async def one(n: int) -> None:
        signed = None
        if style == "signed":
            path, (body, signed) = f"/hooks/{SIGNED_PROVIDER}", messages[n]
            secret = None
        elif style == "rixapi":
            path, body, secret = f"/hooks/rixapi/tok-{n}", rixapi_body(f"t-{n}"), None
        elif style == "token":
            path, body, secret = f"/hooks/apiframe/tok-{n}", callback_body(f"t-{n}"), f"sec-{n}"
        else:
            path, body, secret = "/hooks/apiframe", callback_body(f"t-{n}"), SECRET
        request = scope(path, body, secret, signed)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(request, receive, send)
        if sent[0]["status"] != 200:
            raise AssertionError(f"{path} answered {sent[0]['status']}")

    async with app.lifespan():
        await app.framework()  # loaded before the clock starts, whichever route needs it
        runtime = app.state.runtime
        if style in ("token", "rixapi"):  # jobs as POST /jobs makes them: a token (and secret)
            for n in range(count):
                job = NewJob(
                    job=queued_job(provider, f"t-{n}"),
                    token_hash=digest(f"tok-{n}"),
                    secret_hash=digest(f"sec-{n}") if style == "token" else None,
                )
                await runtime.store.create_job(job)
        left = list(range(count))

        async def sender() -> None:
            while left:
                await one(left.pop())

        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        while loops and (
            runtime.dispatcher._busy or await runtime.store.next_delivery_at() is not None
        ):
            await asyncio.sleep(0.005)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    what = "ingest and delivery" if loops else "ingest"
    route = f"/hooks/{provider}/{{token}}" if style in ("token", "rixapi") else f"/hooks/{provider}"
    print(
        f"{route}, {what}: {count / wall:.0f} callbacks/s,"
        f" {cpu / count * 1e6:.0f} µs of CPU per callback"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    args = sys.argv[1:]
    count = int(next((a for a in args if a.isdigit()), "5000"))
    with tempfile.TemporaryDirectory() as directory:
        os.environ.update(
            RECEIVER_DATABASE_URL=f"sqlite:///{Path(directory) / 'receiver.db'}",
            RECEIVER_HANDLERS="receiver.bench.handler",
            RECEIVER_APIFRAME_WEBHOOK_SECRET=SECRET,
            RECEIVER_ADMIN_TOKEN=secrets.token_urlsafe(32),
            RECEIVER_RIXAPI_BASE_URL="http://127.0.0.1:9",  # its posts confirmed by pulling
            RECEIVER_LOG_LEVEL="WARNING",
            **route_env(SECRET),  # the generic Standard Webhooks sender of --signed
        )
        style = next((a[2:] for a in args if a in ("--token", "--rixapi", "--signed")), "static")
        uvloop.run(
            main(
                count,
                style=style,
                loops="--no-loops" not in args,
                profile="--profile" in args,
            )
        )
