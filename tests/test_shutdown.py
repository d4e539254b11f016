"""Graceful shutdown, handler timeouts and leases.

SIGTERM to a real `receiver serve`: the listening socket closes, in-flight requests
finish, running handlers get RECEIVER_SHUTDOWN_GRACE, and the rest is left pending for
the next start. A hanging async handler is cut off at RECEIVER_HANDLER_TIMEOUT and
retried, and two dispatchers on one database never run the same delivery at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from live_process import SECRET, ReceiverProcess, callback

from receiver.config import load_settings
from receiver.dispatch import DeliveryInfo, Dispatcher, Registry
from receiver.errors import ConfigError
from receiver.ingest import Ingest
from receiver.models import Event, Job, Status, Update
from receiver.store import NewJob, SQLiteStore, Write
from receiver.submit import queued_job
from receiver.testing import running_receiver

# The task id says what the handler does: `sleep<seconds>-<name>` sleeps that long, unless
# the file RELEASE_FILE exists. Every start and end is logged with the time.
HANDLER_MODULE = textwrap.dedent(
    """
    import asyncio
    import os
    import time
    from receiver import on

    def note(what, event, job, delivery):
        line = f"{what} {job.task_id} {delivery.attempt} {time.time()}\\n".encode()
        fd = os.open(os.environ["HANDLED_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    @on("*")
    async def slow(event, job, delivery):
        note("start", event, job, delivery)
        seconds = float(job.task_id.split("-")[0].removeprefix("sleep") or 0)
        if not os.path.exists(os.environ["RELEASE_FILE"]):
            await asyncio.sleep(seconds)
        note("end", event, job, delivery)
    """
)


def notes(directory: Path) -> list[tuple[str, str, int, float]]:
    """(start|end, task id, attempt, time) for every line the handler wrote."""
    path = directory / "handled.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        what, task, attempt, at = line.split(" ")
        found.append((what, task, int(attempt), float(at)))
    return found


def delivery_of(db: Path, task_id: str) -> tuple[str, int]:
    """(state, attempts) of the delivery made for the callback of `task_id`."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT d.state, d.attempts FROM deliveries d JOIN jobs j ON j.id = d.job_id"
            " WHERE j.task_id = ?",
            (task_id,),
        ).fetchone()
    conn.close()
    assert row is not None, f"no delivery for {task_id}"
    return str(row[0]), int(row[1])


@contextlib.asynccontextmanager
async def receiver_in(tmp_path: Path, **env: str) -> AsyncIterator[ReceiverProcess]:
    (tmp_path / "shutdown_handlers.py").write_text(HANDLER_MODULE)
    receiver = ReceiverProcess(
        tmp_path,
        handlers="shutdown_handlers",
        env={"RELEASE_FILE": str(tmp_path / "release"), **env},
    )
    await receiver.start()
    try:
        yield receiver
    finally:
        receiver.kill()


async def send(receiver: ReceiverProcess, task_id: str) -> None:
    async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as client:
        answer = await client.post(
            "/hooks/apiframe", json=callback(task_id), headers={"x-webhook-secret": SECRET}
        )
    assert 200 == answer.status_code


async def started(directory: Path, *tasks: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while {t for w, t, _, _ in notes(directory) if w == "start"} < set(tasks):
        assert time.monotonic() < deadline, f"handlers for {tasks} did not start"
        await asyncio.sleep(0.02)


class TestSigterm:
    """SIGTERM finishes what is in flight within the grace and leaves the rest for next time."""

    async def test_in_flight_request_is_answered_and_new_connections_refused(
        self, tmp_path: Path
    ) -> None:
        """A request half-sent at SIGTERM still gets its 200 and is stored; nobody new gets in."""
        async with receiver_in(tmp_path, RECEIVER_SHUTDOWN_GRACE="10") as receiver:
            body = httpx.Request("POST", "/", json=callback("sleep0-inflight")).content
            reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
            writer.write(
                b"POST /hooks/apiframe HTTP/1.1\r\nHost: receiver\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + f"x-webhook-secret: {SECRET}\r\n\r\n".encode()
            )
            half = len(body) // 2
            writer.write(f"{half:x}\r\n".encode() + body[:half] + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.3)  # the request is being read

            receiver.terminate()
            refused = False
            deadline = time.monotonic() + 5
            while not refused and time.monotonic() < deadline:
                try:
                    _, probe = await asyncio.open_connection("127.0.0.1", receiver.port)
                    probe.close()
                    await asyncio.sleep(0.05)
                except ConnectionRefusedError:
                    refused = True
            assert refused, "the listening socket stayed open after SIGTERM"
            assert receiver.alive(), "the receiver exited with a request in flight"

            rest = body[half:]
            writer.write(f"{len(rest):x}\r\n".encode() + rest + b"\r\n0\r\n\r\n")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), timeout=10)
            writer.close()
            assert await receiver.exited(timeout=20)

        assert b"HTTP/1.1 200 OK\r\n" == status_line
        # Stored; its handler was not started after SIGTERM, so it waits for the next start.
        assert ("pending", 0) == delivery_of(receiver.db, "sleep0-inflight")

    async def test_running_handlers_get_the_grace_and_the_rest_waits(self, tmp_path: Path) -> None:
        """One handler ends within the grace (done); one does not (cut off, pending, not failed)."""
        async with receiver_in(tmp_path, RECEIVER_SHUTDOWN_GRACE="3") as receiver:
            await send(receiver, "sleep1-within")
            await send(receiver, "sleep600-beyond")
            await started(tmp_path, "sleep1-within", "sleep600-beyond")
            signalled = time.monotonic()
            receiver.terminate()
            assert await receiver.exited(timeout=20)
            took = time.monotonic() - signalled

        assert ("done", 1) == delivery_of(receiver.db, "sleep1-within")
        # Cut off by the shutdown, not by a failure: pending, its attempt not counted.
        assert ("pending", 0) == delivery_of(receiver.db, "sleep600-beyond")
        ended = {task for what, task, _, _ in notes(tmp_path) if what == "end"}
        assert {"sleep1-within"} == ended
        assert 2.5 < took < 10, f"shutdown took {took:.1f}s with a 3s grace"

        # The next start runs what was left (it no longer sleeps).
        (tmp_path / "release").touch()
        async with receiver_in(tmp_path) as again:
            deadline = time.monotonic() + 20
            while delivery_of(again.db, "sleep600-beyond")[0] != "done":
                assert time.monotonic() < deadline, "the pending delivery did not run"
                await asyncio.sleep(0.1)
            again.terminate()
            assert await again.exited(timeout=20)
        runs = [(w, a) for w, t, a, _ in notes(tmp_path) if t == "sleep600-beyond"]
        assert [("start", 1), ("start", 1), ("end", 1)] == runs


class TestSyncHandlerAtShutdown:
    """A sync handler cannot be cancelled: stop waits for it and records its own outcome."""

    async def test_sync_handler_past_the_grace_is_waited_for(self, tmp_path: Path) -> None:
        """With a 0.2s grace, a 1.5s sync handler still finishes and its delivery is done."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
        await store.open()
        handlers = Registry()
        finished: list[str] = []

        @handlers.on("*")
        def slow(event: Event, job: Job) -> None:
            time.sleep(1.5)
            finished.append(event.id)

        dispatcher = Dispatcher(store, handlers, idle_wait=0.05)
        loop = asyncio.create_task(dispatcher.run())
        try:
            update = Update(status=Status.SUCCEEDED, raw_status="finished", task_id="t-sync")
            new_job = NewJob(job=queued_job("apiframe", "t-sync"))
            recorded = await Ingest(store, handlers, dispatcher.wake).record(
                Write(update=update, source="callback", new_job=new_job)
            )
            deadline = time.monotonic() + 10
            while [d.state.value for d in await store.list_deliveries()] != ["running"]:
                assert time.monotonic() < deadline, "the delivery did not start"
                await asyncio.sleep(0.02)
            began = time.monotonic()
            await dispatcher.stop(grace=0.2)
            waited = time.monotonic() - began
            (delivery,) = await store.list_deliveries()
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await store.close()
        assert [recorded.event.id] == finished
        assert ("done", 1) == (delivery.state.value, delivery.attempts)
        assert waited > 1.0


class TestHandlerTimeout:
    """An async handler that hangs is cut off at RECEIVER_HANDLER_TIMEOUT and retried."""

    async def test_hanging_handler_is_cut_off_and_retried(self, tmp_path: Path) -> None:
        """The first attempt hangs and is cut at 1s; the retry succeeds; the delivery is done."""
        handlers = Registry()
        starts: list[tuple[int, float]] = []
        ends: list[int] = []

        @handlers.on("*")
        async def hangs_once(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            starts.append((delivery.attempt, time.monotonic()))
            if delivery.attempt == 1:
                await asyncio.Event().wait()  # never set: hangs
            ends.append(delivery.attempt)

        env = {
            "RECEIVER_HANDLER_TIMEOUT": "1",
            "RECEIVER_RETRY_BASE_DELAY": "0.1",
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        }
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as live,
            httpx.AsyncClient(base_url=live.url, timeout=10) as client,
        ):
            answer = await client.post(
                "/hooks/apiframe", json=callback("t-hang"), headers={"x-webhook-secret": SECRET}
            )
            assert 200 == answer.status_code
            store = live.runtime.store
            deadline = time.monotonic() + 15
            while [d.state.value for d in await store.list_deliveries()] != ["done"]:
                assert time.monotonic() < deadline, "the retry did not finish"
                await asyncio.sleep(0.05)
            (delivery,) = await store.list_deliveries()

        assert [1, 2] == [attempt for attempt, _ in starts]
        assert [2] == ends
        assert 1.0 <= starts[1][1] - starts[0][1] < 5.0
        assert (2, "timed out after 1s") == (delivery.attempts, delivery.last_error)


class TestLeases:
    """Two dispatchers on one database never run the same delivery at the same time."""

    async def test_two_dispatchers_share_without_overlap(self, tmp_path: Path) -> None:
        """Even a sync handler that overruns its lease keeps it: each delivery runs once."""
        url = f"sqlite:///{tmp_path / 'receiver.db'}"
        stores = [SQLiteStore(url), SQLiteStore(url)]
        for store in stores:
            await store.open()
        runs: list[tuple[str, str, float, float]] = []
        lock = threading.Lock()

        def registry_for(who: str) -> Registry:
            """The same handler (same name) for each dispatcher, noting which one ran it."""
            handlers = Registry()

            @handlers.on("*")
            def record(event: Event, job: Job, delivery: DeliveryInfo) -> None:
                begin = time.monotonic()
                # Three overrun timeout + margin (1s) twice over: their lease must be renewed.
                time.sleep(2.0 if job.task_id in ("t-0", "t-7", "t-14") else 0.05)
                with lock:
                    runs.append((delivery.id, who, begin, time.monotonic()))

            return handlers

        dispatchers = [
            Dispatcher(
                store,
                registry_for(who),
                timeout=0.5,
                lease_margin=0.5,
                concurrency=4,
                idle_wait=0.05,
            )
            for who, store in zip("AB", stores, strict=True)
        ]

        def wake_all() -> None:
            for dispatcher in dispatchers:
                dispatcher.wake()

        loops = [asyncio.create_task(d.run()) for d in dispatchers]
        try:
            await asyncio.sleep(0.3)  # both past their start-up release
            ingest = Ingest(stores[0], dispatchers[0].handlers, wake_all)
            for n in range(20):
                update = Update(status=Status.SUCCEEDED, raw_status="finished", task_id=f"t-{n}")
                new_job = NewJob(job=queued_job("apiframe", f"t-{n}"))
                await ingest.record(Write(update=update, source="callback", new_job=new_job))
            deadline = time.monotonic() + 30
            while len(await stores[0].list_deliveries(state=None)) != 20 or any(
                d.state.value != "done" for d in await stores[0].list_deliveries()
            ):
                assert time.monotonic() < deadline, "deliveries did not finish"
                await asyncio.sleep(0.1)
            claimed = await stores[1].list_deliveries()
        finally:
            for dispatcher in dispatchers:
                await dispatcher.stop(grace=5)
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            for store in stores:
                await store.close()

        # Each delivery ran once, so never twice at the same time, and was claimed once.
        assert {d.id: 1 for d in claimed} == dict(Counter(delivery_id for delivery_id, *_ in runs))
        assert [1] * 20 == [d.attempts for d in claimed]
        # Both dispatchers took work, and overlapped in time: the test shared the deliveries.
        assert {"A", "B"} == {who for _, who, _, _ in runs}
        overlapped = any(
            a_who != b_who and a_begin < b_end and b_begin < a_end
            for _, a_who, a_begin, a_end in runs
            for _, b_who, b_begin, b_end in runs
        )
        assert overlapped


class TestShutdownGraceSetting:
    """RECEIVER_SHUTDOWN_GRACE is read, validated and shown by `receiver serve --help`."""

    def test_default_and_value(self) -> None:
        """30 seconds unless set; a set value is read as seconds."""
        assert 30.0 == load_settings({}, config_file=None).shutdown_grace
        grace = load_settings({"RECEIVER_SHUTDOWN_GRACE": "2.5"}, config_file=None)
        assert 2.5 == grace.shutdown_grace

    @pytest.mark.parametrize("value", ["-1", "soon"])
    def test_bad_values_name_the_variable(self, value: str) -> None:
        """A negative or non-numeric grace stops the start with the variable's name."""
        with pytest.raises(ConfigError, match="RECEIVER_SHUTDOWN_GRACE"):
            load_settings({"RECEIVER_SHUTDOWN_GRACE": value}, config_file=None)

    def test_serve_help_names_it(self) -> None:
        """`receiver serve --help` lists --shutdown-grace with its variable."""
        shown = subprocess.run(
            [sys.executable, "-m", "receiver", "serve", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "--shutdown-grace" in shown
        assert "RECEIVER_SHUTDOWN_GRACE" in shown
