"""The acknowledgement contract: a 2xx survives a SIGKILL of the receiver at any moment."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

SECRET = "static-secret-for-the-kill-test"
HANDLER_MODULE = textwrap.dedent(
    """
    import os
    from receiver import on

    @on("*")
    def record(event, job):
        line = f"{event.id} {job.task_id}\\n".encode()
        fd = os.open(os.environ["HANDLED_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_receiver(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "HANDLED_FILE": str(tmp_path / "handled.log"),
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_HANDLERS": "kill_handlers",
        "RECEIVER_ADMIN_TOKEN": "admin",
        "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        "RECEIVER_PORT": str(port),
    }
    with (tmp_path / "receiver.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "receiver exited during start"
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("receiver did not become healthy")


async def send_until_refused(
    url: str, acknowledged: set[str], sent: list[str], worker: int
) -> None:
    """Post unique finished-task callbacks until the receiver stops answering."""
    async with httpx.AsyncClient(timeout=5) as client:
        for n in range(10_000):
            task_id = f"task-{worker}-{n}"
            body = {
                "task_id": task_id,
                "task_type": "runway",
                "status": "finished",
                "percentage": 100,
                "video_url": f"https://cdn.example/{task_id}.mp4",
            }
            sent.append(task_id)
            try:
                answer = await client.post(
                    f"{url}/hooks/apiframe", json=body, headers={"x-webhook-secret": SECRET}
                )
            except httpx.HTTPError:
                return
            if answer.status_code == 200:
                acknowledged.add(task_id)


def stored_state(db: Path) -> dict[str, tuple[str, str]]:
    """task id -> (event id, delivery state) for every stored callback."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT j.task_id, e.id, d.state FROM jobs j JOIN events e ON e.job_id = j.id"
            " JOIN deliveries d ON d.event_id = e.id"
        ).fetchall()
    return {task: (event, state) for task, event, state in rows}


class TestKillNine:
    """SIGKILL while callbacks are in flight loses no acknowledged callback."""

    async def test_every_acknowledged_callback_is_stored_and_handled_after_restart(
        self, tmp_path: Path
    ) -> None:
        """Kill -9 under load, restart, and find every 2xx'd callback stored and its handler run."""
        (tmp_path / "kill_handlers.py").write_text(HANDLER_MODULE)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        first = start_receiver(tmp_path, port)
        acknowledged: set[str] = set()
        sent: list[str] = []
        try:
            await wait_healthy(url, first)
            senders = [
                asyncio.create_task(send_until_refused(url, acknowledged, sent, worker))
                for worker in range(16)
            ]
            while len(acknowledged) < 300:
                await asyncio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            await asyncio.wait_for(asyncio.gather(*senders), timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert len(sent) > len(acknowledged), "the kill should interrupt requests in flight"

        second = start_receiver(tmp_path, port)
        try:
            await wait_healthy(url, second)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = stored_state(tmp_path / "receiver.db")
                if all(state.get(task, ("", ""))[1] == "done" for task in acknowledged):
                    break
                await asyncio.sleep(0.2)
        finally:
            second.terminate()
            second.wait(timeout=30)

        state = stored_state(tmp_path / "receiver.db")
        missing = sorted(acknowledged - state.keys())
        assert [] == missing
        not_done = sorted(t for t in acknowledged if state[t][1] != "done")
        assert [] == not_done
        handled = (tmp_path / "handled.log").read_text().split("\n")
        handled_events = {line.split(" ")[0] for line in handled if line}
        assert set() == {state[t][0] for t in acknowledged} - handled_events
        print(
            f"\nkill -9: sent {len(sent)}, acknowledged {len(acknowledged)}, "
            f"stored {len(state)}, lost 0"
        )
