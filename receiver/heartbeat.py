"""Worker heartbeats: who is alive, so the work of a process that died is taken over in seconds.

Every process that runs handlers or polls registers a row in the store's `workers` table
and stamps it every third of RECEIVER_WORKER_TIMEOUT; the deliveries and polls it leases
carry its id. Any process that finds a worker's heartbeat older than the timeout (on the
database's clock, so skewed hosts agree) removes it and puts its leased work back
(`Store.reap_workers`): a process killed mid-handler holds its deliveries up for seconds,
not for the handler lease (RECEIVER_HANDLER_TIMEOUT + 30 s). A process also takes over at
once from the workers it can prove dead: on its own host and in its own PID namespace,
whose pid is gone (a restarted `receiver serve`).

A live worker is never taken over while it beats. One that finds its own row gone was
declared dead while alive (its loop stalled, or it could not reach the database for the
whole timeout): its deliveries may already run elsewhere. It has its dispatcher renew
every lease at once and stop the handlers whose lease is gone (their writes are fenced by
the attempt number anyway), then registers again. It does the same at every failed beat
once its last heartbeat is older than the timeout, so a worker cut off from its
heartbeats stops a taken-over handler within a beat, not at the next lease renewal.

A process judges others late only after beating without a gap for a whole timeout
itself: when the database was out of reach for everyone, every heartbeat is late once it
is back, and the first process to reconnect must not take over the others' live work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from receiver.errors import StoreUnavailable
from receiver.models import new_id, now
from receiver.store.base import Store, Worker

__all__ = ["Heartbeat", "pid_scope", "proven_dead", "this_process"]

log = logging.getLogger("receiver.heartbeat")


def pid_scope() -> str:
    """This boot and PID namespace, where a pid means one process; "" when unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def this_process() -> Worker:
    """A new worker identity for this process."""
    return Worker(
        id=new_id("wrk"), host=socket.gethostname(), pid=os.getpid(), pid_scope=pid_scope()
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def proven_dead(other: Worker, me: Worker) -> bool:
    """Whether `other` has certainly stopped: it ran where our pids mean the same processes,
    and its pid is gone. Anything less waits for its heartbeat to be late.

    Its pid being ours proves nothing: it is then this very process (several runtimes in
    one), since a restarted container starts in a PID namespace of its own.
    """
    if other.id == me.id or not me.pid_scope:
        return False
    if (other.host, other.pid_scope) != (me.host, me.pid_scope):
        return False
    return other.pid != me.pid and not _pid_alive(other.pid)


class Heartbeat:
    """Keeps this process's worker row fresh and takes over the work of dead workers."""

    def __init__(
        self,
        store: Store,
        *,
        timeout: float = 15.0,
        on_declared_dead: Callable[[], Awaitable[object]] | None = None,
        worker: Worker | None = None,
    ):
        self.store = store
        self.timeout = timeout
        self.interval = timeout / 3
        # Others judge our heartbeat by the timeout we set, so it travels with our row.
        self.worker = msgspec.structs.replace(worker or this_process(), timeout=timeout)
        self.on_declared_dead = on_declared_dead
        self._registered = False
        self._task: asyncio.Task[None] | None = None
        # Monotonic times: our last heartbeat that landed, and the start of the unbroken run
        # of heartbeats it ends (see `_beaten`).
        self._last_beat: float | None = None
        self._steady_since = 0.0

    @property
    def id(self) -> str:
        return self.worker.id

    async def start(self) -> None:
        """Register and take over from dead workers now, then beat in the background.

        A store that is down does not stop the start: the beat registers when it can,
        and until then this worker's claims take nothing (see `Store.claim_deliveries`).
        """
        with contextlib.suppress(StoreUnavailable):
            await self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Stop beating and remove this worker's row, giving back any work still stamped with it."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self.store.reap_workers(late=False, dead=[self.id], at=now())

    async def beat(self) -> None:
        """One heartbeat: stamp our row (registering if needed), then reap the dead."""
        if not self._registered:
            self.worker = await self.store.register_worker(self.worker)
            self._registered = True
        elif not await self.store.heartbeat(self.id):
            log.warning(
                "this worker (%s) missed its heartbeats for over %gs and was declared dead;"
                " its leased work was taken over: stopping those handlers and joining again",
                self.id,
                self.timeout,
            )
            if self.on_declared_dead is not None:
                await self.on_declared_dead()
            self.worker = await self.store.register_worker(self.worker)
        self._beaten()
        await self.reap()

    def _beaten(self) -> None:
        """Note a heartbeat that landed; a missed one starts a new unbroken run."""
        moment = time.monotonic()
        if self._last_beat is None or moment - self._last_beat > 2 * self.interval:
            self._steady_since = moment
        self._last_beat = moment

    @property
    def steady(self) -> bool:
        """Whether our heartbeats have landed without a gap for a whole timeout, so that a
        late heartbeat of another means it stopped, not that the database was away."""
        return self._last_beat is not None and (
            self._last_beat - self._steady_since >= self.timeout
        )

    async def reap(self) -> None:
        """Take back the work of workers we can prove dead, and, once steady, of late ones."""
        dead = [w.id for w in await self.store.list_workers() if proven_dead(w, self.worker)]
        reaped = await self.store.reap_workers(late=self.steady, dead=dead, at=now())
        if reaped.workers or reaped.deliveries or reaped.polls:
            log.warning(
                "took over %d deliveries and %d polls from stopped workers %s",
                reaped.deliveries,
                reaped.polls,
                ", ".join(reaped.workers) or "(none left)",
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                # A beat stuck on a vanished server must not delay the next one.
                async with asyncio.timeout(self.interval):
                    await self.beat()
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("heartbeat failed: %s", exc or type(exc).__name__)
                await self._fence_if_late()
            except Exception:
                log.exception("heartbeat failed unexpectedly")

    async def _fence_if_late(self) -> None:
        """After a failed beat: once our last heartbeat is older than the timeout, others may
        have declared us dead, so check every lease and stop the handlers that lost theirs,
        at each failed beat until one lands (a lease the store cannot answer for is kept)."""
        late = self._last_beat is None or time.monotonic() - self._last_beat > self.timeout
        if late and self._registered and self.on_declared_dead is not None:
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.on_declared_dead()
