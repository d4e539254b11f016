"""A `receiver serve` subprocess driven by `Popen` (to SIGKILL it at will), a callback load,
and one run of any other `receiver` command (`run_cli`).

Ports, stored callbacks and handler runs are read with tests/live_process.py's helpers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from receiver.testing import TEST_ADMIN_TOKEN

__all__ = [
    "HANDLER_MODULE",
    "SECRET",
    "run_cli",
    "send_until_refused",
    "start_receiver",
    "wait_healthy",
]

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


def start_receiver(
    tmp_path: Path, port: int, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "HANDLED_FILE": str(tmp_path / "handled.log"),
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_HANDLERS": "kill_handlers",
        "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        "RECEIVER_PORT": str(port),
        **(extra_env or {}),
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


async def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path, base: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """`python -m receiver ARGS` in `cwd`: its exit code, stdout and stderr.

    Its environment is `base` (this process's when None) with `env` on top.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        *args,
        env={**(os.environ if base is None else base), **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
