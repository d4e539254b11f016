"""The hook route's own cost, without HTTP: callbacks handed straight to the fast path.

    python deploy/bench/inprocess.py [N] [--token] [--no-loops] [--profile]

Builds the app on a fresh SQLite file with the benchmark's no-op handler, then passes N
apiframe callbacks, 50 at a time, to `FastHooks.handle` as uvicorn would (scope, receive,
send), and waits until every delivery has run. `--token` posts each to its own job's URL
(`/hooks/apiframe/{token}`, jobs made beforehand) instead of the static route;
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

CONCURRENCY = 50
SECRET = "bench-secret"


def scope(path: str, body: bytes, secret: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "client": ("127.0.0.1", 5555),
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"x-webhook-secret", secret.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }


async def main(count: int, *, token: bool, loops: bool, profile: bool) -> None:
    from receiver.app import create_app
    from receiver.bench.load import callback_body
    from receiver.store.base import NewJob
    from receiver.submit import queued_job
    from receiver.verify import digest

    app = create_app(run_loops=loops)
    fast = app.fast  # type: ignore[attr-defined]

    async def one(n: int) -> None:
        body = callback_body(f"t-{n}")
        path = f"/hooks/apiframe/tok-{n}" if token else "/hooks/apiframe"
        request = scope(path, body, f"sec-{n}" if token else SECRET)
        route = fast.route(request)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def fallback(*_: Any) -> None:
            raise AssertionError(f"the fast path did not take {path}")

        await fast.handle(route, request, receive, send, fallback)
        if sent[0]["status"] != 200:
            raise AssertionError(f"{path} answered {sent[0]['status']}")

    async with app.lifespan():
        runtime = app.state.runtime
        if token:  # jobs as POST /jobs would make them: a token and a secret each
            for n in range(count):
                job = NewJob(
                    job=queued_job("apiframe", f"t-{n}"),
                    token_hash=digest(f"tok-{n}"),
                    secret_hash=digest(f"sec-{n}"),
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
    route = "/hooks/apiframe/{token}" if token else "/hooks/apiframe"
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
            RECEIVER_LOG_LEVEL="WARNING",
        )
        uvloop.run(
            main(
                count,
                token="--token" in args,
                loops="--no-loops" not in args,
                profile="--profile" in args,
            )
        )
