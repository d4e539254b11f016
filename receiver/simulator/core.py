"""The simulator's state and clock: tasks, their lifecycle, and the callbacks they send.

Every simulated job goes queued -> running (40 %) -> succeeded or failed, one `step_delay`
apart. At each change the provider's `Script` says which callback (if any) that provider
would send; the simulator sends it from a background task and records the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import httpx
import msgspec

from receiver.simulator.config import SimConfig, update_config
from receiver.simulator.phase import Phase

__all__ = [
    "CallbackInfo",
    "Outgoing",
    "Phase",
    "Script",
    "SimTask",
    "Simulator",
    "TaskInfo",
]

_log = logging.getLogger(__name__)

_RUNNING_PROGRESS = 40


class Outgoing(NamedTuple):
    """One callback a provider would send: a JSON body, or none for a bare GET."""

    method: str
    url: str
    body: Any = None
    headers: dict[str, str] | None = None


class CallbackInfo(msgspec.Struct, kw_only=True):
    """One callback sent, and what the receiver answered (or why nothing came back)."""

    method: str
    url: str
    body: Any = None
    status_code: int | None = None
    error: str | None = None
    sent_at: float


class TaskInfo(msgspec.Struct, kw_only=True):
    """A task as `GET /_sim/tasks` shows it."""

    provider: str
    task_id: str
    status: Phase
    progress: int
    callback_url: str | None
    result_url: str | None
    preview_url: str | None
    created_at: float
    updated_at: float
    callbacks: list[CallbackInfo]
    # The create request's JSON body as received, its webhook secret left out.
    request: dict[str, Any] | None = None


@dataclasses.dataclass(kw_only=True)
class SimTask:
    """A simulated job: what the provider module renders, plus the config it was created under."""

    provider: str
    task_id: str
    config: SimConfig
    callback_url: str | None = None
    secret: str | None = None
    result_url: str | None = None
    preview_url: str | None = None
    status: Phase = Phase.QUEUED
    progress: int = 0
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    callbacks: list[CallbackInfo] = dataclasses.field(default_factory=list)
    request: dict[str, Any] | None = None
    # Which issue of its URLs the task is at (1: the first), and whether a fetch of the
    # current ones was refused as expired (the status API then issues the next).
    url_issue: int = 1
    urls_refused: bool = False

    def info(self) -> TaskInfo:
        return TaskInfo(
            provider=self.provider,
            task_id=self.task_id,
            status=self.status,
            progress=self.progress,
            callback_url=self.callback_url,
            result_url=self.result_url,
            preview_url=self.preview_url,
            created_at=self.created_at,
            updated_at=self.updated_at,
            callbacks=list(self.callbacks),
            request=self.request,
        )


def _media_name(url: str) -> str:
    return url.rpartition("/")[2]


def _reissued(url: str | None) -> str | None:
    """The same media under a new name, as a freshly signed link would be."""
    if not url:
        return url
    base, _, name = url.rpartition("/")
    return f"{base}/{uuid.uuid4().hex}.{name.rpartition('.')[2]}"


# A provider's callback for a task at (phase, progress), or None when it sends nothing then.
Script = Callable[[SimTask, Phase, int], Outgoing | None]


class Simulator:
    """All simulated providers' tasks, their background lifecycles, and the callback client."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config if config is not None else SimConfig()
        self._tasks: dict[tuple[str, str], SimTask] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.status_calls: Counter[str] = Counter()  # by provider, counted by StatusFaults
        self.status_peak: Counter[str] = Counter()  # most concurrent status calls, by provider
        self.create_calls: Counter[str] = Counter()  # by provider, counted by create_refusal
        self._expiring: dict[str, SimTask] = {}  # media name -> its task, for expired URLs

    def authorized(self, provider: str, key: str | None) -> bool:
        """A non-empty key that equals the configured one, if one is configured."""
        if not key:
            return False
        expected = self.config.api_keys.get(provider)
        return expected is None or hmac.compare_digest(key.encode(), expected.encode())

    def add(self, provider: str, **fields: Any) -> SimTask:
        """Register a new task under a fresh id, with a snapshot of the current config."""
        config = msgspec.structs.replace(self.config)
        if config.no_preview:
            fields["preview_url"] = None
        task = SimTask(provider=provider, task_id=str(uuid.uuid4()), config=config, **fields)
        self._tasks[(provider, task.task_id)] = task
        self._expire(task)
        return task

    def find(self, provider: str, task_id: str) -> SimTask | None:
        return self._tasks.get((provider, task_id))

    def status_of(self, provider: str, task_id: str) -> SimTask | None:
        """The task as its status API describes it now: a succeeded one whose URLs were
        refused as expired gets fresh ones first (a provider signs its links anew)."""
        task = self.find(provider, task_id)
        if task is not None and task.urls_refused and task.status is Phase.SUCCEEDED:
            task.result_url = _reissued(task.result_url)
            task.preview_url = _reissued(task.preview_url)
            task.url_issue += 1
            task.urls_refused = False
            self._expire(task)
        return task

    def expired(self, media: str) -> int | None:
        """The status a fetch of media `media` answers when its link has expired, else None."""
        task = self._expiring.get(media)
        if task is None:
            return None
        if media in (_media_name(url) for url in (task.result_url, task.preview_url) if url):
            task.urls_refused = True
        return task.config.expire_status

    def _expire(self, task: SimTask) -> None:
        """Mark the task's current URLs expired while its issue is within `expire_results`."""
        if task.url_issue > task.config.expire_results:
            return
        for url in (task.result_url, task.preview_url):
            if url:
                self._expiring[_media_name(url)] = task

    def tasks(self) -> list[TaskInfo]:
        """Every task, oldest first."""
        return [task.info() for task in self._tasks.values()]

    def start(self, task: SimTask, script: Script) -> None:
        """Run the task's lifecycle in the background; the create answer never waits for it."""
        runner = asyncio.get_running_loop().create_task(self._lifecycle(task, script))
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)

    async def hold_answer(self, task: SimTask) -> None:
        """Keep a create answer back for `create_delay` while the task already runs."""
        if task.config.create_delay:
            await asyncio.sleep(task.config.create_delay)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every lifecycle has ended; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while self._running:
                await asyncio.wait(set(self._running))

    async def reset(self, config: SimConfig | None = None) -> None:
        """Cancel every lifecycle, forget every task, and set the config back (in place)."""
        await self._cancel()
        self._tasks.clear()
        self._expiring.clear()
        self.status_calls.clear()
        self.status_peak.clear()
        self.create_calls.clear()
        update_config(self.config, msgspec.structs.asdict(config or SimConfig()))

    async def close(self) -> None:
        """Cancel every lifecycle and close the callback client."""
        await self._cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """An ASGI lifespan that closes the simulator at shutdown."""
        try:
            yield
        finally:
            await self.close()

    async def _cancel(self) -> None:
        runners = list(self._running)
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    async def _lifecycle(self, task: SimTask, script: Script) -> None:
        config = task.config
        final = (Phase.FAILED, _RUNNING_PROGRESS) if config.fail else (Phase.SUCCEEDED, 100)
        steps = ((Phase.RUNNING, _RUNNING_PROGRESS), final)
        try:
            for phase, progress in steps:
                await asyncio.sleep(config.step_delay)
                task.status, task.progress, task.updated_at = phase, progress, time.time()
                await self._notify(task, script(task, phase, progress))
            if config.late:
                await self._notify(task, script(task, Phase.RUNNING, _RUNNING_PROGRESS))
        except Exception:
            _log.exception("simulated %s task %s crashed", task.provider, task.task_id)

    async def _notify(self, task: SimTask, outgoing: Outgoing | None) -> None:
        if outgoing is None or task.config.lose:
            return
        for _ in range(2 if task.config.duplicate else 1):
            task.callbacks.append(await self._send(outgoing, task.config.callback_timeout))

    async def _send(self, outgoing: Outgoing, timeout: float) -> CallbackInfo:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        headers = dict(outgoing.headers or {})
        content = None
        if outgoing.body is not None:
            content = msgspec.json.encode(outgoing.body)
            headers["content-type"] = "application/json"
        info = CallbackInfo(
            method=outgoing.method, url=outgoing.url, body=outgoing.body, sent_at=time.time()
        )
        try:
            response = await self._client.request(
                outgoing.method, outgoing.url, content=content, headers=headers, timeout=timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            info.error = f"{type(exc).__name__}: {exc}"
        else:
            info.status_code = response.status_code
        failure = info.error or (
            f"answered {info.status_code}" if (info.status_code or 0) >= 300 else None
        )
        if failure is not None:
            # Else a callback sent to the wrong port (RECEIVER_PUBLIC_URL) leaves no trace.
            _log.warning("callback %s %s failed: %s", outgoing.method, outgoing.url, failure)
        return info
