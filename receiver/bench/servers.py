"""The servers a benchmark runs: the receiver, the bare-ASGI floor and adnanh/webhook.

Each is a subprocess on a free loopback port; `Server.ready` waits for its first
answer and says how long that took from spawn, and `rss` reads its resident memory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Server", "free_port", "start_floor", "start_receiver", "start_webhook", "webhook_path"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, probe: bytes) -> bool:
    """True once the port answers `probe` with a 2xx."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(probe)
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


class Server:
    """A started server process, its URL and the request that proves it ready."""

    def __init__(
        self, name: str, process: subprocess.Popen[bytes], port: int, probe: bytes, spawned: float
    ):
        self.name = name
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._probe = probe
        self._spawned = spawned

    def ready(self, timeout: float = 30.0, probe: bytes | None = None) -> float:
        """Wait for the first 2xx to `probe` (by default the server's own readiness request);
        return milliseconds from spawn to that answer."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} at start")
            if _answers(self.port, probe or self._probe):
                return (time.perf_counter() - self._spawned) * 1000
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} did not answer within {timeout:g}s")

    def rss(self) -> int:
        """Resident memory in bytes (0 when it cannot be read)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(
    name: str, argv: list[str], env: Mapping[str, str], port: int, probe: bytes, log: Path
) -> Server:
    with log.open("ab") as handle:
        spawned = time.perf_counter()
        process = subprocess.Popen(
            argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=handle, cwd=log.parent
        )
    return Server(name, process, port, probe, spawned)


def start_receiver(
    directory: Path, *, database_url: str, secret: str, handled: Path, extra: Mapping[str, str]
) -> Server:
    """`receiver serve` on a free port with the benchmark's no-op handler."""
    port = free_port()
    env = {
        **os.environ,
        "RECEIVER_DATABASE_URL": database_url,
        "RECEIVER_HANDLERS": "receiver.bench.handler",
        "RECEIVER_BENCH_HANDLED": str(handled),
        "RECEIVER_APIFRAME_WEBHOOK_SECRET": secret,
        "RECEIVER_ADMIN_TOKEN": secrets.token_urlsafe(32),  # nobody uses it: not shown
        "RECEIVER_PORT": str(port),
        "RECEIVER_PUBLIC_URL": f"http://bench.example:{port}",
        "RECEIVER_LOG_LEVEL": "WARNING",
        **extra,
    }
    probe = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    argv = [sys.executable, "-m", "receiver", "serve"]
    return _spawn("receiver", argv, env, port, probe, directory / "receiver.log")


def start_floor(directory: Path) -> Server:
    port = free_port()
    probe = b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"
    argv = [sys.executable, "-m", "receiver.bench.floor", str(port)]
    return _spawn("floor", argv, os.environ, port, probe, directory / "floor.log")


def webhook_path() -> str | None:
    return shutil.which("webhook")


def start_webhook(directory: Path, secret: str) -> Server:
    """adnanh/webhook with one hook, `apiframe`, triggered by the same secret header.

    It runs no command and persists nothing: the fastest it can answer.
    """
    hooks = [
        {
            "id": "apiframe",
            "response-message": "ok",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "match": {
                    "type": "value",
                    "value": secret,
                    "parameter": {"source": "header", "name": "x-webhook-secret"},
                }
            },
        }
    ]
    (directory / "hooks.json").write_text(json.dumps(hooks))
    port = free_port()
    probe = (
        f"POST /hooks/apiframe HTTP/1.1\r\nHost: bench\r\nx-webhook-secret: {secret}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    argv = [
        webhook_path() or "webhook",
        "-hooks",
        str(directory / "hooks.json"),
        "-ip",
        "127.0.0.1",
        "-port",
        str(port),
    ]
    return _spawn("webhook", argv, os.environ, port, probe, directory / "webhook.log")
