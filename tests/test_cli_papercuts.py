"""An operator's day with the `receiver` command, run as a real subprocess: reading
commands create nothing, the public URL follows the port, logs keep their format,
submit knows each provider's fields, and every command's exit code is the documented one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import procs
import pytest

from receiver.config import load_settings
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.testing import TEST_ADMIN_TOKEN

# Exit codes, as docs/operations.md lists them.
OK, JOB_FAILED, USAGE, UNAVAILABLE, NOTHING = 0, 1, 2, 3, 4
# A PostgreSQL server nobody runs: the store is unreachable.
DOWN_STORE = "postgresql://postgres@127.0.0.1:1/nothing"
GENERIC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def clean_environ() -> dict[str, str]:
    """This process's environment without any RECEIVER_* variable of the host."""
    return {key: value for key, value in os.environ.items() if not key.startswith("RECEIVER_")}


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path) -> tuple[int, str, str]:
    """`python -m receiver ARGS` in `cwd` with only `env` as RECEIVER_* settings."""
    return await procs.run_cli(*args, env=env, cwd=cwd, base=clean_environ())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(step_delay=0.05)) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, sim: RunningSimulator) -> dict[str, str]:
    settings = {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RECEIVER_HANDLERS": "",
    }
    for provider in ("apiframe", "aivideoapi", "runway_ai", "artvisum"):
        settings[f"RECEIVER_{provider.upper()}_BASE_URL"] = sim.base_url(provider)
        settings[f"RECEIVER_{provider.upper()}_API_KEY"] = "k"
    return settings


class Serve:
    """`receiver serve` as a subprocess; its stderr lines are read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str], cwd: Path) -> Serve:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "serve",
            *args,
            env={**clean_environ(), **env},
            cwd=cwd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def line_with(self, text: str, timeout: float = 20.0) -> str:
        """The first stderr line holding `text`; AssertionError if the process ends first."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(
                self.process.stderr.readline(), max(0.1, deadline - time.monotonic())
            )
            if not raw:
                raise AssertionError(f"serve ended without {text!r}: {self.lines}")
            self.lines.append(raw.decode().rstrip("\n"))
            if text in self.lines[-1]:
                return self.lines[-1]

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class TestReadingCreatesNothing:
    """Reading commands pointed at a missing SQLite file say so and create no file at all."""

    @pytest.mark.parametrize(
        "command",
        [
            ["jobs"],
            ["job", "job_x"],
            ["events", "job_x"],
            ["deliveries"],
            ["quarantine"],
            ["replay", "--all-dead"],
        ],
        ids=lambda command: command[0],
    )
    async def test_missing_database_is_one_line_exit_3(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        code, out, err = await run_cli(*command, env={}, cwd=tmp_path)
        assert (UNAVAILABLE, "") == (code, out)
        expected = (
            f"receiver: no database at {tmp_path / 'receiver.db'}: run `receiver serve` there"
            " first, or set RECEIVER_DATABASE_URL\n"
        )
        assert expected == err
        assert [] == sorted(os.listdir(tmp_path))  # no database, no -wal, no token file

    async def test_doctor_fails_the_database_check_and_creates_nothing(
        self, tmp_path: Path
    ) -> None:
        env = {"RECEIVER_PORT": str(free_port())}  # nothing answers the public URL quickly
        code, out, _ = await run_cli("doctor", "--json", "--timeout", "1", env=env, cwd=tmp_path)
        assert JOB_FAILED == code
        database = next(c for c in json.loads(out)["checks"] if c["name"] == "database")
        assert not database["ok"]
        assert f"no database at {tmp_path / 'receiver.db'}" in database["detail"]
        assert [] == sorted(os.listdir(tmp_path))

    async def test_serve_refuses_a_missing_database_directory(self, tmp_path: Path) -> None:
        missing = tmp_path / "no" / "such"
        env = {"RECEIVER_DATABASE_URL": f"sqlite:///{missing / 'r.db'}", "RECEIVER_PORT": "1"}
        code, _, err = await run_cli("serve", "--log-format", "text", env=env, cwd=tmp_path)
        assert UNAVAILABLE == code
        assert f"no directory {missing} for the database" in err
        assert "serving on" not in err
        assert not (tmp_path / "no").exists()


class TestPublicUrlFollowsThePort:
    """Unset, RECEIVER_PUBLIC_URL is where this receiver listens, so callbacks reach it."""

    def test_default_follows_host_and_port(self) -> None:
        assert "http://127.0.0.1:8123" == load_settings({"RECEIVER_PORT": "8123"}).public_url
        wildcard = load_settings({"RECEIVER_HOST": "0.0.0.0", "RECEIVER_PORT": "9001"})
        assert "http://127.0.0.1:9001" == wildcard.public_url
        ipv6 = load_settings({"RECEIVER_HOST": "::1", "RECEIVER_PORT": "9002"})
        assert "http://[::1]:9002" == ipv6.public_url
        given = {"RECEIVER_PORT": "9003", "RECEIVER_PUBLIC_URL": "https://hooks.example"}
        assert "https://hooks.example" == load_settings(given).public_url

    async def test_a_job_on_another_port_gets_its_callbacks(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        port = free_port()
        serve = await Serve.start("--port", str(port), env=env, cwd=tmp_path)
        try:
            await serve.line_with("serving on")
            code, out, err = await run_cli(
                "submit", "apiframe", "prompt=a fox", "--wait", "--timeout", "15", "--json",
                env={**env, "RECEIVER_PORT": str(port)}, cwd=tmp_path,
            )  # fmt: skip
            assert OK == code, err
            assert "succeeded" == json.loads(out)["status"]
        finally:
            await serve.stop()

    async def test_the_simulator_logs_a_failed_callback(
        self, sim: RunningSimulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        hook = f"http://127.0.0.1:{free_port()}/hooks/apiframe/tok"
        async with httpx.AsyncClient(base_url=sim.url) as http:
            answer = await http.post(
                "/apiframe/runway-imagine",
                headers={"authorization": "k"},
                json={
                    "prompt": "fox",
                    "generation_type": "text2video",
                    "webhook_url": hook,
                    "webhook_secret": "s3",
                },
            )
        assert 200 == answer.status_code
        with caplog.at_level(logging.WARNING, logger="receiver.simulator"):
            for _ in range(100):
                if any(hook in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
        failed = [r.getMessage() for r in caplog.records if hook in r.getMessage()]
        assert failed, "no line about the failed callback"
        assert "ConnectError" in failed[0]


class TestJobsProviderFilter:
    """`jobs --provider` takes a declared generic provider and refuses an unknown name."""

    async def test_declared_generic_provider_and_unknown_one(self, tmp_path: Path) -> None:
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
            "RECEIVER_GENERIC_PROVIDERS": "acme",
            "RECEIVER_ACME_WEBHOOK_SECRET": GENERIC_SECRET,
        }
        assert OK == (await run_cli("migrate", env=env, cwd=tmp_path))[0]
        code, out, err = await run_cli(
            "jobs", "--provider", "acme", "--json", env=env, cwd=tmp_path
        )
        assert (OK, []) == (code, json.loads(out)["items"]), err
        code, _, err = await run_cli("jobs", "--provider", "acmee", env=env, cwd=tmp_path)
        assert USAGE == code
        assert "unknown provider 'acmee' (did you mean acme?)" in err
        assert 1 == len(err.splitlines())


class TestServeLogs:
    """With RECEIVER_LOG_FORMAT=json every stderr line of `serve` is JSON, and "serving
    on" is said only of a socket that accepts connections."""

    async def test_json_lines_and_serving_on_after_the_bind(self, tmp_path: Path) -> None:
        port = free_port()
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
            "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_NO_SUCH_SETTING": "1",  # warned about before the format is known
        }
        serve = await Serve.start("--port", str(port), env=env, cwd=tmp_path)
        try:
            line = await serve.line_with("serving on")
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass  # it listens when it says so
            entry = json.loads(line)
            assert f"public URL http://127.0.0.1:{port}" in entry["message"]
            entries = [json.loads(text) for text in serve.lines]  # every line is JSON
            messages = " | ".join(e["message"] for e in entries)
            assert "RECEIVER_NO_SUCH_SETTING" in messages
            assert "RECEIVER_PUBLIC_URL is" in messages  # the loopback warning
        finally:
            await serve.stop()

    async def test_port_taken_is_one_json_line_exit_2(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {
                "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
                "RECEIVER_LOG_FORMAT": "json",
                "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
                "RECEIVER_PUBLIC_URL": "https://hooks.example",
            }
            code, _, err = await run_cli("serve", "--port", str(port), env=env, cwd=tmp_path)
        assert USAGE == code
        entries = [json.loads(text) for text in err.splitlines()]
        assert [
            f"cannot listen on http://127.0.0.1:{port}: address already in use"
            " (RECEIVER_HOST/RECEIVER_PORT, or --host/--port)"
        ] == [e["message"] for e in entries]


class TestSubmitFields:
    """`submit` checks the fields against the provider's before a job exists, and lists them."""

    async def test_unknown_field_is_refused_with_the_fields_and_no_job(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        assert OK == (await run_cli("migrate", env=env, cwd=tmp_path))[0]
        code, _, err = await run_cli("submit", "aivideoapi", "prompt=a fox", env=env, cwd=tmp_path)
        assert USAGE == code
        assert 1 == len(err.splitlines())
        assert "aivideoapi has no field 'prompt' (did you mean text_prompt?)" in err
        assert "text_prompt, image_prompt, video_prompt" in err
        code, out, _ = await run_cli("jobs", "--json", env=env, cwd=tmp_path)
        assert (OK, []) == (code, json.loads(out)["items"])

    async def test_missing_required_field_is_refused(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        assert OK == (await run_cli("migrate", env=env, cwd=tmp_path))[0]
        code, _, err = await run_cli(
            "submit", "aivideoapi", "endpoint=video", "text_prompt=x", env=env, cwd=tmp_path
        )
        assert USAGE == code
        assert "aivideoapi needs video_prompt; aivideoapi fields: endpoint" in err
        code, out, _ = await run_cli("jobs", "--json", env=env, cwd=tmp_path)
        assert (OK, []) == (code, json.loads(out)["items"])

    async def test_fields_flag_and_help_list_them(self, tmp_path: Path) -> None:
        code, out, _ = await run_cli("submit", "aivideoapi", "--fields", env={}, cwd=tmp_path)
        assert OK == code
        assert out.startswith("aivideoapi fields: endpoint, text_prompt,")
        assert "required: text_prompt" in out
        code, out, _ = await run_cli("submit", "--help", env={}, cwd=tmp_path)
        assert OK == code
        assert "artvisum    endpoint, prompt, negative_prompt, image=@FILE, video=@FILE" in out
        assert [] == os.listdir(tmp_path)


class TestExitCodes:
    """Each command exits with its documented code: 0 ok, 2 usage, 4 unknown id, 3 unreachable."""

    @pytest.fixture
    async def job_id(self, tmp_path: Path, env: dict[str, str]) -> str:
        code, out, err = await run_cli(
            "submit", "runway_ai", "prompt=x", "duration=5", "--json", env=env, cwd=tmp_path
        )
        assert OK == code, err
        return str(json.loads(out)["id"])

    @pytest.mark.parametrize(
        ("command", "expected"),
        [
            (["jobs"], OK),
            (["jobs", "--limit", "many"], USAGE),
            (["jobs", "--provider", "nope"], USAGE),
            (["job", "{job}"], OK),
            (["job"], USAGE),
            (["job", "job_nope"], NOTHING),
            (["events", "{job}"], OK),
            (["events"], USAGE),
            (["events", "job_nope"], NOTHING),
            (["deliveries", "--job", "{job}"], OK),
            (["deliveries", "--state", "bogus"], USAGE),
            (["deliveries", "--job", "job_nope"], NOTHING),
            (["quarantine"], OK),
            (["quarantine", "--limit", "many"], USAGE),
            (["replay"], USAGE),
            (["replay", "dlv_nope"], NOTHING),
            (["replay", "--all-dead"], NOTHING),
            (["submit", "runway_ai", "prompt=x", "duration=5"], OK),
            (["submit", "runway_ai", "promt=x"], USAGE),
            (["submit", "nope"], USAGE),
            (["trigger", "rixapi", "exploded", "--job", "{job}"], USAGE),
            (["migrate"], OK),
        ],
        ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
    )
    async def test_documented_code(
        self,
        tmp_path: Path,
        env: dict[str, str],
        job_id: str,
        command: list[str],
        expected: int,
    ) -> None:
        args = [part.replace("{job}", job_id) for part in command]
        code, _, err = await run_cli(*args, env=env, cwd=tmp_path)
        assert expected == code, err
        assert "Traceback" not in err

    @pytest.mark.parametrize(
        "command",
        [
            ["jobs"],
            ["job", "job_x"],
            ["events", "job_x"],
            ["deliveries", "--job", "job_x"],
            ["quarantine"],
            ["replay", "--all-dead"],
            ["submit", "runway_ai", "prompt=x", "duration=5"],
            ["migrate"],
        ],
        ids=lambda command: command[0],
    )
    async def test_store_unreachable_is_3(self, tmp_path: Path, command: list[str]) -> None:
        env = {
            "RECEIVER_DATABASE_URL": DOWN_STORE,
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_HANDLERS": "",
        }
        code, _, err = await run_cli(*command, env=env, cwd=tmp_path)
        assert UNAVAILABLE == code, err
        assert 1 == len(err.splitlines()), err

    @pytest.mark.parametrize(
        "command",
        [
            ["jobs"],
            ["job", "job_x"],
            ["events", "job_x"],
            ["deliveries", "--job", "job_x"],
            ["quarantine"],
            ["replay", "--all-dead"],
            ["trigger", "rixapi", "succeeded", "--job", "job_x", "--wait", "0"],
        ],
        ids=lambda command: command[0],
    )
    async def test_receiver_unreachable_is_3(self, tmp_path: Path, command: list[str]) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        env = {"RECEIVER_URL": url, "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN}
        extra = ["--url", url] if command[0] == "trigger" else []
        code, _, err = await run_cli(*command, *extra, env=env, cwd=tmp_path)
        assert UNAVAILABLE == code, err

    async def test_doctor_with_the_store_down_is_1(self, tmp_path: Path) -> None:
        env = {"RECEIVER_DATABASE_URL": DOWN_STORE, "RECEIVER_PORT": str(free_port())}
        code, out, _ = await run_cli("doctor", "--timeout", "1", env=env, cwd=tmp_path)
        assert JOB_FAILED == code
        assert "FAIL  database" in out
