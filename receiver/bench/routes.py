"""The route styles `receiver bench` loads, each sending what its provider would send.

- `static`: `POST /hooks/apiframe` with the static secret, a new task per callback.
- `token`: `POST /hooks/apiframe/{token}` with the job's own secret: progress posts to
  jobs made beforehand (each connection posts to its own jobs, progress rising).
- `rixapi`: `POST /hooks/rixapi/{token}`, no credential but the token: running-status
  progress posts, which are not terminal and so need no confirmation pull.
- `signed`: `POST /hooks/stdhooks`, a generic provider's Standard Webhooks signature
  over the raw body, a new task per message.
- `nudge`: `GET /hooks/aivideoapi/{token}?uuid=...`, answered by a receiver started with
  `RECEIVER_NO_WORKER` so the pulls it schedules wait (the nudge's own write is timed).

Each request has a key a stored record can be matched with (`stored_keys`), read back
through the Store's own API, never its tables.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from receiver.verify import digest, mint_secret, mint_token

if TYPE_CHECKING:
    from receiver.store import Store

__all__ = [
    "DESCRIPTIONS",
    "JOB_ROUTES",
    "PER_JOB",
    "POST_ROUTES",
    "ROUTES",
    "SIGNED_PROVIDER",
    "JobPool",
    "RequestMaker",
    "callback_body",
    "http_request",
    "jobs_needed",
    "make_jobs",
    "request_maker",
    "route_env",
    "signed_message",
    "signing_secret",
    "stored_keys",
]

ROUTES: Final = ("static", "token", "rixapi", "signed", "nudge")
POST_ROUTES: Final = ("static", "token", "rixapi", "signed")
JOB_ROUTES: Final = ("token", "rixapi", "nudge")  # routes to jobs that must exist first
SIGNED_PROVIDER: Final = "stdhooks"

DESCRIPTIONS: Final = {
    "static": "POST /hooks/apiframe (static secret)",
    "token": "POST /hooks/apiframe/{token} (job's secret)",
    "rixapi": "POST /hooks/rixapi/{token} (no auth, progress)",
    "signed": f"POST /hooks/{SIGNED_PROVIDER} (Standard Webhooks)",
    "nudge": "GET /hooks/aivideoapi/{token}?uuid= (polls deferred)",
}

_PROVIDERS: Final = {
    "static": "apiframe",
    "token": "apiframe",
    "rixapi": "rixapi",
    "signed": SIGNED_PROVIDER,
    "nudge": "aivideoapi",
}

# Progress is kept to 4 decimals in the dedupe key, so a job takes at most 9,999 distinct
# progress posts per status; a connection moves to its next job after this many.
PER_JOB: Final = 9000
# No built-in generator on one core sends faster than this: jobs are made for it.
_MAX_RATE: Final = 20_000.0

# (request bytes, key of what the store must hold once it is acknowledged), or None
# when the connection has no job left to post to.
RequestMaker = Callable[[int, int], tuple[bytes, str] | None]


class JobPool(msgspec.Struct, kw_only=True):
    """Jobs made for one load of a job route: `jobs[worker][slot]` = (job id, token, secret)."""

    route: str
    task_prefix: str
    jobs: list[list[tuple[str, str, str | None]]]


def signing_secret(run_secret: str) -> str:
    """The generic provider's `whsec_` secret, derived from the run's secret."""
    raw = digest(run_secret + ":stdhooks").encode()[:32]
    return "whsec_" + base64.b64encode(raw).decode()


def route_env(run_secret: str, *, nudges: bool = False) -> dict[str, str]:
    """The receiver settings the routes need: the generic sender, and for nudges no worker.

    aivideoapi's base URL points at a closed port: with no worker, nothing ever pulls.
    """
    env = {
        "RECEIVER_GENERIC_PROVIDERS": SIGNED_PROVIDER,
        f"RECEIVER_{SIGNED_PROVIDER.upper()}_WEBHOOK_SECRET": signing_secret(run_secret),
        "RECEIVER_AIVIDEOAPI_BASE_URL": "http://127.0.0.1:9",
    }
    if nudges:
        env["RECEIVER_NO_WORKER"] = "true"
    return env


def http_request(method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request on a keep-alive connection."""
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def callback_body(task_id: str) -> bytes:
    """A finished apiframe callback, as apiframe documents it."""
    return (
        f'{{"task_id":"{task_id}","task_type":"runway","status":"finished","percentage":100,'
        f'"video_url":"https://cdn.example/{task_id}.mp4"}}'
    ).encode()


def _signed_body(task_id: str) -> bytes:
    url = f"https://cdn.example/{task_id}.mp4"
    data = {"task_id": task_id, "status": "succeeded", "video_url": url}
    envelope = {"type": "job.succeeded", "timestamp": "2026-12-07T00:00:00Z", "data": data}
    return msgspec.json.encode(envelope)


def signed_message(whsec: str, task_id: str) -> tuple[bytes, dict[str, str]]:
    """A Standard Webhooks `job.succeeded` message for `task_id`: its body, and the
    `webhook-*` headers that sign it with `whsec`."""
    from receiver.standard_webhooks import headers_for

    body = _signed_body(task_id)
    return body, headers_for(whsec, f"msg_{task_id}", body)


def _progress(n: int) -> tuple[int, float]:
    """The slot (which of the connection's jobs) and progress of its n-th post (n from 1)."""
    return (n - 1) // PER_JOB, ((n - 1) % PER_JOB + 1) / 10_000


def request_maker(route: str, prefix: str, secret: str, pool: JobPool | None) -> RequestMaker:
    """What connection `worker` sends as its `n`-th request (n from 1) on `route`."""
    json_head = {"Content-Type": "application/json"}
    if route == "static":
        static_head = {**json_head, "x-webhook-secret": secret}

        def static(worker: int, n: int) -> tuple[bytes, str]:
            task = f"{prefix}{worker}-{n}"
            return http_request("POST", "/hooks/apiframe", static_head, callback_body(task)), task

        return static
    if route == "signed":
        whsec = signing_secret(secret)

        def signed(worker: int, n: int) -> tuple[bytes, str]:
            task = f"{prefix}{worker}-{n}"
            body, signature = signed_message(whsec, task)
            headers = {**json_head, **signature}
            return http_request("POST", f"/hooks/{SIGNED_PROVIDER}", headers, body), task

        return signed
    if pool is None:
        raise ValueError(f"route {route} needs its jobs")
    jobs = pool.jobs

    def job_route(worker: int, n: int) -> tuple[bytes, str] | None:
        slot, progress = _progress(n) if route != "nudge" else (0, 0.0)
        if slot >= len(jobs[worker]):
            return None
        job_id, token, job_secret = jobs[worker][slot]
        task = f"{pool.task_prefix}{worker}-{slot}"
        if route == "nudge":
            path = f"/hooks/aivideoapi/{token}?uuid={task}"
            return http_request("GET", path, {}), job_id
        if route == "token":
            body = (
                f'{{"task_id":"{task}","task_type":"runway","status":"processing",'
                f'"percentage":{progress * 100:.2f}}}'
            ).encode()
            headers = {**json_head, "x-webhook-secret": job_secret or ""}
            path = f"/hooks/apiframe/{token}"
        else:
            body = f'{{"task_id":"{task}","status":"1","progress":"{progress:.4f}"}}'.encode()
            headers = json_head
            path = f"/hooks/rixapi/{token}"
        return http_request("POST", path, headers, body), f"{job_id} {progress:.4f}"

    return job_route


def jobs_needed(concurrency: int, seconds: float) -> int:
    """Jobs per connection for a load of `seconds`: enough for the fastest generator."""
    most = math.ceil(seconds * _MAX_RATE / concurrency) + 1
    return max(1, math.ceil(most / PER_JOB))


async def make_jobs(
    store: Store, route: str, task_prefix: str, *, concurrency: int, seconds: float
) -> JobPool:
    """Create, through the store, the queued jobs a load of a job route posts to.

    Each has a fresh URL token (and for apiframe a webhook secret), stored hashed as
    `receiver submit` stores them; the plain values stay in the pool for the requests.
    """
    from receiver.store import NewJob
    from receiver.submit import queued_job

    provider = _PROVIDERS[route]
    per_worker = 1 if route == "nudge" else jobs_needed(concurrency, seconds)
    jobs: list[list[tuple[str, str, str | None]]] = []
    creates = []
    for worker in range(concurrency):
        row: list[tuple[str, str, str | None]] = []
        for slot in range(per_worker):
            token = mint_token()
            secret = mint_secret() if provider == "apiframe" else None
            job = queued_job(provider, f"{task_prefix}{worker}-{slot}")
            creates.append(
                NewJob(
                    job=job,
                    token_hash=digest(token),
                    secret_hash=digest(secret) if secret else None,
                )
            )
            row.append((job.id, token, secret))
        jobs.append(row)
    await asyncio.gather(*(store.create_job(new) for new in creates))
    return JobPool(route=route, task_prefix=task_prefix, jobs=jobs)


async def _each(items: Iterable[str], call: Callable[[str], Awaitable[None]]) -> None:
    """`call` on every item, 16 at a time (a PostgreSQL pool's worth)."""
    gate = asyncio.Semaphore(16)

    async def run(item: str) -> None:
        async with gate:
            await call(item)

    await asyncio.gather(*(run(item) for item in items))


async def stored_keys(store: Store, route: str, keys: Sequence[str]) -> set[str]:
    """Which of the acknowledged `keys` of `route` the store holds (a key may repeat).

    A new task (static, signed) is its job found by task id with an event; a progress
    post is an event of its job with that progress; a nudge is one kept request of its
    job, so a job's keys count as stored up to the number of requests kept for it.
    """
    found: set[str] = set()
    provider = _PROVIDERS[route]
    if route in ("static", "signed"):

        async def task(key: str) -> None:
            job = await store.job_by_task(provider, key)
            if job is not None and await store.list_events(job.id, limit=1):
                found.add(key)

        await _each(set(keys), task)
        return found
    per_job: dict[str, int] = {}
    for key in keys:
        job_id = key.split(" ", 1)[0]
        per_job[job_id] = per_job.get(job_id, 0) + 1

    async def job(job_id: str) -> None:
        if route == "nudge":
            kept = len(await store.list_requests(job_id))
            if kept >= per_job[job_id]:
                found.add(job_id)
            return
        for event in await store.list_events(job_id, limit=PER_JOB + 1):
            found.add(f"{job_id} {event.progress or 0.0:.4f}")

    await _each(per_job, job)
    return found
