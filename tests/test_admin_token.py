"""The admin credentials at start and the files the receiver writes, with real processes:
a guessable token or an exposed token file stops `serve` and `worker` in one line, and
everything written (database, -wal, -shm, token file, heartbeat) is the user's alone."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live_process import free_port

from receiver.config import load_settings
from receiver.runtime import admin_token_file, ensure_admin_token
from receiver.store import SQLiteStore
from receiver.testing import TEST_ADMIN_TOKEN

GOOD_TOKEN = "A" * 43
PRIVATE = 0o600


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def base_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a receiver in `tmp_path`, with no admin token of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    return {
        **env,
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_HANDLERS": "",
        "RECEIVER_PORT": str(free_port()),
        "RECEIVER_PUBLIC_URL": "https://hooks.example.test",  # no warning line about it
    }


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`receiver <command>` to its end (a refused start ends at once)."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused(answer: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 (a configuration error) with one line on stderr naming every fragment."""
    assert (2, "") == (answer.returncode, answer.stdout), answer.stderr
    assert "Traceback" not in answer.stderr
    lines = answer.stderr.strip().splitlines()
    assert 1 == len(lines), answer.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner had, so 0644 is what a plain create gives."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


class TestGuessableTokensStopTheStart:
    """`serve` and `worker` refuse an empty or short admin or metrics token, in one line."""

    @pytest.mark.parametrize("command", ["serve", "worker"])
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("RECEIVER_ADMIN_TOKEN", ""),
            ("RECEIVER_ADMIN_TOKEN", "x"),
            ("RECEIVER_ADMIN_TOKEN", "s3cret-but-31-characters-long.."),
            ("RECEIVER_ADMIN_TOKEN", " " * 40),
            ("RECEIVER_METRICS_TOKEN", "metrics-token-of-31-characters."),
        ],
        ids=["empty", "one-char", "31-chars", "blank", "metrics-31-chars"],
    )
    def test_short_token_is_refused(
        self, tmp_path: Path, command: str, variable: str, value: str
    ) -> None:
        env = {**base_env(tmp_path), "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN, variable: value}
        answer = run(command, env, tmp_path)
        assert_refused(answer, variable, "at least 32 characters")
        if len(value.strip()) > 1:
            assert value not in answer.stderr  # never echoed
        assert not (tmp_path / "receiver.db").exists()  # refused before anything was made

    def test_32_characters_are_enough(self) -> None:
        """The limit is 32: a token of exactly that length is accepted."""
        settings = load_settings({"RECEIVER_ADMIN_TOKEN": "b" * 32}, config_file=None)
        assert "b" * 32 == settings.admin_token


class TestTokenFileChecks:
    """A token file that group or others can open, or that holds a short token, stops the start."""

    @pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620])
    @pytest.mark.parametrize("command", ["serve", "worker"])
    def test_token_file_open_to_others_is_refused(
        self, tmp_path: Path, command: str, bits: int
    ) -> None:
        """The message says the chmod to run."""
        path = tmp_path / "receiver.db.admin-token"
        path.write_text(GOOD_TOKEN + "\n")
        path.chmod(bits)
        answer = run(command, base_env(tmp_path), tmp_path)
        assert_refused(answer, f"chmod 600 {path}", f"{bits:04o}")
        assert GOOD_TOKEN not in answer.stderr

    @pytest.mark.parametrize(
        ("content", "said"), [("", "it is empty"), ("\n", "it is empty"), ("short\n", "it has 5")]
    )
    def test_empty_or_short_token_file_is_refused(
        self, tmp_path: Path, content: str, said: str
    ) -> None:
        """An empty file is not an empty token (whose digest anyone could compute)."""
        path = tmp_path / "receiver.db.admin-token"
        path.write_text(content)
        path.chmod(PRIVATE)
        answer = run("serve", base_env(tmp_path), tmp_path)
        assert_refused(answer, str(path), "at least 32 characters", said)

    def test_private_file_with_a_long_token_is_used(self, tmp_path: Path) -> None:
        """A 0600 file with a good token is read as it is."""
        settings = load_settings({"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
        path = admin_token_file(settings)
        path.write_text(GOOD_TOKEN + "\n")
        path.chmod(PRIVATE)
        assert GOOD_TOKEN == ensure_admin_token(settings)

    def test_clients_refuse_an_exposed_file_too(self, tmp_path: Path) -> None:
        """`receiver trigger`, which reads the file to call the API, says the same."""
        path = tmp_path / "receiver.db.admin-token"
        path.write_text(GOOD_TOKEN + "\n")
        path.chmod(0o644)
        answer = subprocess.run(
            [sys.executable, "-m", "receiver", "trigger", "apiframe", "succeeded", "--job", "j"],
            env=base_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert_refused(answer, f"chmod 600 {path}")


class TestGeneratedTokenFile:
    """The generated token file is private from its first byte and written once."""

    def test_created_private_even_with_an_open_umask(self, tmp_path: Path) -> None:
        """Mode 0600 whatever the umask; the token is long; no temporary file is left."""
        settings = load_settings({"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
        old = os.umask(0)
        try:
            token = ensure_admin_token(settings)
        finally:
            os.umask(old)
        path = admin_token_file(settings)
        assert (PRIVATE, token) == (mode(path), path.read_text().strip())
        assert len(token) >= 32
        assert [path.name] == [p.name for p in tmp_path.iterdir()]

    def test_concurrent_starts_agree_on_one_token(self, tmp_path: Path) -> None:
        """Starts racing to create the file all end with the one token that was written."""
        settings = load_settings({"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
        barrier = threading.Barrier(8)
        tokens: list[str | BaseException] = []

        def start() -> None:
            barrier.wait()
            try:
                tokens.append(ensure_admin_token(settings))
            except BaseException as exc:  # a start that failed is a finding, not a crash
                tokens.append(exc)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        path = admin_token_file(settings)
        assert [path.read_text().strip()] * 8 == tokens
        assert [path.name] == [p.name for p in tmp_path.iterdir()]


async def wait_until(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
async def serving(tmp_path: Path, umask_022: None) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A real `receiver serve`, started under umask 022 with no admin token given."""
    env = base_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{env['RECEIVER_PORT']}"

    def healthy() -> bool:
        assert process.poll() is None, "receiver exited during start"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await wait_until(healthy, "a healthy receiver")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


class TestFilesArePrivate:
    """Every file the receiver writes is readable by its user only, under umask 022."""

    async def test_serve_writes_database_wal_shm_and_token_0600(
        self, tmp_path: Path, serving: subprocess.Popen[bytes]
    ) -> None:
        """After a real start: the database, its -wal and -shm files, and the token file."""
        names = ["receiver.db", "receiver.db-wal", "receiver.db-shm", "receiver.db.admin-token"]
        found = {name: mode(tmp_path / name) for name in names}
        assert {name: PRIVATE for name in names} == found

    async def test_worker_heartbeat_is_private(self, tmp_path: Path, umask_022: None) -> None:
        """`receiver worker` makes its heartbeat file (and the rest) under umask 077."""
        heartbeat = tmp_path / "worker.alive"
        env = {
            **base_env(tmp_path),
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_HEARTBEAT_FILE": str(heartbeat),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_until(heartbeat.exists, "the heartbeat file")
            names = ["worker.alive", "receiver.db", "receiver.db-wal", "receiver.db-shm"]
            assert {n: PRIVATE for n in names} == {n: mode(tmp_path / n) for n in names}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    async def test_the_store_alone_makes_private_files(
        self, tmp_path: Path, umask_022: None
    ) -> None:
        """Used as a library or by a direct CLI command (no umask set), SQLite files are 0600."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'lib' / 'r.db'}")
        await store.open()
        try:
            names = ["r.db", "r.db-wal", "r.db-shm"]
            found = {name: mode(tmp_path / "lib" / name) for name in names}
        finally:
            await store.close()
        assert {name: PRIVATE for name in names} == found
