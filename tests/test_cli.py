"""The `receiver` command run as a real subprocess, against the provider simulator."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from live_process import ReceiverProcess
from procs import run_cli

from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.testing import TEST_ADMIN_TOKEN


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys={"runway_ai": "k"})) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, sim: RunningSimulator) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "RECEIVER_RUNWAY_AI_BASE_URL": sim.base_url("runway_ai"),
        "RECEIVER_RUNWAY_AI_API_KEY": "k",
        "RECEIVER_ARTVISUM_BASE_URL": sim.base_url("artvisum"),
        "RECEIVER_ARTVISUM_API_KEY": "k",
        "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RECEIVER_HANDLERS": "",
    }


class TestSubmitAndInspect:
    """`submit`, `jobs` and `job` work on the database directly."""

    async def test_submit_then_list_and_show(
        self, tmp_path: Path, env: dict[str, str], sim: RunningSimulator
    ) -> None:
        """A synchronous provider's job is succeeded at once and shows up in `jobs` and `job`."""
        code, out, err = await run_cli(
            "submit",
            "runway_ai",
            "prompt=a fox",
            "duration=5",
            "--metadata",
            "order=7",
            "--json",
            env=env,
            cwd=tmp_path,
        )
        assert 0 == code, err
        job = json.loads(out)
        assert ("succeeded", {"order": 7}) == (job["status"], job["metadata"])
        assert job["result_url"].startswith(sim.url)

        code, out, _ = await run_cli("jobs", "--json", env=env, cwd=tmp_path)
        assert 0 == code
        assert [job["id"]] == [item["id"] for item in json.loads(out)["items"]]

        code, out, _ = await run_cli("job", job["id"], env=env, cwd=tmp_path)
        assert 0 == code
        assert "succeeded" in out and "submit" in out

    async def test_submit_routes_events_to_the_configured_handlers(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A job that completes inside the create call gets deliveries for `serve` to run."""
        (tmp_path / "my_handlers.py").write_text(
            "from receiver import on\n\n@on('succeeded')\nasync def done(event, job):\n    pass\n"
        )
        env = {**env, "RECEIVER_HANDLERS": "my_handlers"}
        code, out, err = await run_cli(
            "submit", "runway_ai", "prompt=x", "duration=5", "--json", env=env, cwd=tmp_path
        )
        assert 0 == code, err
        job_id = json.loads(out)["id"]
        code, out, _ = await run_cli("job", job_id, "--json", env=env, cwd=tmp_path)
        deliveries = json.loads(out)["deliveries"]
        assert [("my_handlers.done", "pending")] == [(d["handler"], d["state"]) for d in deliveries]

    async def test_serve_on_an_unusable_database_exits_3_in_one_line(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A database that cannot be opened stops `serve` with one line, not a traceback."""
        (tmp_path / "blocker").write_text("a file where a folder should be")
        env = {**env, "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'blocker' / 'r.db'}"}
        code, _, err = await run_cli("serve", "--port", "1", env=env, cwd=tmp_path)
        assert 3 == code
        assert "Traceback" not in err
        assert 1 == len(err.strip().splitlines())

    async def test_submit_uploads_a_local_file(
        self, tmp_path: Path, env: dict[str, str], sim: RunningSimulator
    ) -> None:
        """From the CLI a file field names a local file, which is uploaded to the provider."""
        (tmp_path / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
        code, out, err = await run_cli(
            "submit", "artvisum", "image=frame.png", "--json", env=env, cwd=tmp_path
        )
        assert 0 == code, err
        job = json.loads(out)
        assert ("queued", 1) == (job["status"], len(sim.tasks()))
        assert job["task_id"] == sim.tasks()[0].task_id

    async def test_refused_submit_exits_1_with_the_error(
        self, tmp_path: Path, env: dict[str, str], sim: RunningSimulator
    ) -> None:
        """A provider's refusal is a failed job and exit code 1, not a traceback."""
        sim.config.create_error = 500
        code, out, err = await run_cli(
            "submit", "runway_ai", "prompt=x", "duration=5", env=env, cwd=tmp_path
        )
        assert 1 == code
        assert "failed" in out and "error:" in out
        assert "Traceback" not in err

    async def test_bad_setting_exits_2_naming_it(self, tmp_path: Path, env: dict[str, str]) -> None:
        """A bad variable stops the command with one line that names it."""
        code, _, err = await run_cli(
            "jobs", env={**env, "RECEIVER_HANDLER_MAX_ATTEMPTS": "lots"}, cwd=tmp_path
        )
        assert 2 == code
        assert "RECEIVER_HANDLER_MAX_ATTEMPTS" in err
        assert 1 == len(err.strip().splitlines())

    async def test_unconfigured_provider_exits_2(self, tmp_path: Path, env: dict[str, str]) -> None:
        """Submitting without the provider's base URL says which variable is missing."""
        code, _, err = await run_cli("submit", "apiframe", "prompt=x", env=env, cwd=tmp_path)
        assert 2 == code
        assert "RECEIVER_APIFRAME_BASE_URL" in err

    async def test_provider_without_api_key_exits_2(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A base URL without the API key is refused before a job is made, naming the key."""
        env = {**env, "RECEIVER_RUNWAY_AI_API_KEY": ""}
        code, _, err = await run_cli(
            "submit", "runway_ai", "prompt=x", "duration=5", env=env, cwd=tmp_path
        )
        assert 2 == code
        assert "RECEIVER_RUNWAY_AI_API_KEY" in err
        code, out, _ = await run_cli("jobs", "--json", env=env, cwd=tmp_path)
        assert 0 == code
        assert "runway_ai" not in out

    async def test_help_names_the_variables(self, tmp_path: Path, env: dict[str, str]) -> None:
        """Every option's help says which RECEIVER_* variable sets it too."""
        code, out, _ = await run_cli("serve", "--help", env=env, cwd=tmp_path)
        assert 0 == code
        for variable in (
            "RECEIVER_DATABASE_URL",
            "RECEIVER_HOST",
            "RECEIVER_PORT",
            "RECEIVER_PUBLIC_URL",
            "RECEIVER_HANDLERS",
        ):
            assert variable in out


BROKEN_MODULES = {
    "syntax error": (
        "from receiver import on\n\n@on('succeeded')\nasync def done(event, job)\n    pass\n",
        ["line 4", "SyntaxError"],
    ),
    "missing import": (
        "from receiver import on\nimport requestz\n",
        ["line 2", "ModuleNotFoundError: No module named 'requestz'", "install 'requestz'"],
    ),
    "exception at import": (
        "import os\n\nLIMIT = int(os.environ['NOT_SET_ANYWHERE_X'])\n",
        ["line 3", "KeyError: 'NOT_SET_ANYWHERE_X'"],
    ),
}


THREE_MISTAKES = """from receiver import on


@on("succeded")
async def typo(event, job):
    pass


@on("succeeded", provider="apifram")
async def elsewhere(event, job):
    pass


@on("failed")
async def too_few(event):
    pass
"""


def said(line: str) -> str:
    """The message of one line `serve` or `worker` wrote: a JSON log line (stderr is a
    pipe, so RECEIVER_LOG_FORMAT=auto gives JSON), or plain `receiver: ...` text."""
    if line.startswith("{"):
        message: str = json.loads(line)["message"]
        return message
    return line.removeprefix("receiver: ")


class TestBrokenHandlers:
    """A handlers module that cannot load, or a handler that can never run, stops the start
    with exit 2 and one line that says where and what, the same line `doctor` shows."""

    @staticmethod
    def quiet_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
        """The default module name, found in `tmp_path`; a public URL that warns of nothing."""
        quiet = {**env, "RECEIVER_PUBLIC_URL": "https://receiver.example"}
        quiet.pop("RECEIVER_HANDLERS")
        return quiet

    @pytest.mark.parametrize("case", sorted(BROKEN_MODULES))
    async def test_serve_stops_with_one_line_naming_file_and_line(
        self, tmp_path: Path, env: dict[str, str], case: str
    ) -> None:
        """No traceback: the file, the line, and what is wrong; `doctor` says the same."""
        source, expected = BROKEN_MODULES[case]
        (tmp_path / "handlers.py").write_text(source)
        env = self.quiet_env(env, tmp_path)
        code, _, err = await run_cli("serve", "--port", "1", env=env, cwd=tmp_path)
        assert 2 == code, err
        assert "Traceback" not in err
        [line] = [said(line) for line in err.strip().splitlines()]
        assert line.startswith(f"handlers module 'handlers' ({tmp_path / 'handlers.py'}")
        for part in expected:
            assert part in line
        env["RECEIVER_PUBLIC_URL"] = "http://127.0.0.1:1"  # refused at once
        code, out, _ = await run_cli("doctor", "--json", env=env, cwd=tmp_path)
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert (1, False) == (code, checks["handlers"]["ok"])
        assert line == checks["handlers"]["detail"]

    @pytest.mark.parametrize("command", ["worker", "submit"])
    async def test_every_command_that_loads_handlers_says_the_same_line(
        self, tmp_path: Path, env: dict[str, str], command: str
    ) -> None:
        """`worker` and `submit` load the handlers too, and stop the same way."""
        (tmp_path / "handlers.py").write_text(BROKEN_MODULES["syntax error"][0])
        args = ["runway_ai", "prompt=x", "duration=5"] if command == "submit" else []
        env = self.quiet_env(env, tmp_path)
        code, _, err = await run_cli(command, *args, env=env, cwd=tmp_path)
        assert 2 == code, err
        [line] = err.strip().splitlines()
        assert "line 4" in line and "SyntaxError" in line and "Traceback" not in err

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            (
                "@on('succeeded', provider='apifram')\nasync def done(event, job):\n    pass\n",
                "unknown provider 'apifram' (did you mean 'apiframe'?)",
            ),
            (
                "@on('succeeded')\nasync def done(event):\n    pass\n",
                "its signature (event) cannot be called with (event, job)",
            ),
            (
                "@on('succeded')\nasync def done(event, job):\n    pass\n",
                "@on('succeded'): unknown status 'succeded' (did you mean 'succeeded'?)",
            ),
        ],
    )
    async def test_a_handler_that_can_never_run_stops_the_start(
        self, tmp_path: Path, env: dict[str, str], source: str, expected: str
    ) -> None:
        """A provider that never calls, a signature that cannot be called or a status that
        never comes is one line naming the handler, its file and line; exit 2."""
        (tmp_path / "handlers.py").write_text("from receiver import on\n\n" + source)
        env = self.quiet_env(env, tmp_path)
        for command in (("serve", "--port", "1"), ("worker",)):
            code, _, err = await run_cli(*command, env=env, cwd=tmp_path)
            assert 2 == code, err
            [line] = [said(line) for line in err.strip().splitlines()]
            assert line.startswith(f"handler handlers:done ({tmp_path / 'handlers.py'}, line 3): ")
            assert expected in line

    async def test_every_bad_handler_is_named_at_once(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """Three different mistakes are three lines from `serve` (exit 2) and from `doctor`
        (exit 1), each with the file and line, the handler, what is wrong and what to do."""
        (tmp_path / "handlers.py").write_text(THREE_MISTAKES)
        env = self.quiet_env(env, tmp_path)
        where = tmp_path / "handlers.py"
        expected = [
            f"handler handlers:typo ({where}, line 4): @on('succeded'): unknown status"
            " 'succeded' (did you mean 'succeeded'?); use one of cancelled, failed, queued,"
            " running, succeeded or '*'",
            f"handler handlers:elsewhere ({where}, line 9): unknown provider 'apifram' (did you"
            " mean 'apiframe'?); use one of ",
            f"handler handlers:too_few ({where}, line 14): its signature (event) cannot be"
            " called with (event, job): too many positional arguments; take (event, job)",
        ]
        code, _, err = await run_cli("serve", "--port", "1", env=env, cwd=tmp_path)
        assert 2 == code, err
        lines = [said(line) for line in err.strip().splitlines()]
        assert 3 == len(lines), err
        for want, line in zip(expected, lines, strict=True):
            assert line.startswith(want), line
        env["RECEIVER_PUBLIC_URL"] = "http://127.0.0.1:1"  # refused at once
        code, out, _ = await run_cli("doctor", "--json", env=env, cwd=tmp_path)
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert (1, False) == (code, checks["handlers"]["ok"])
        assert lines == checks["handlers"]["detail"].splitlines()
        code, out, _ = await run_cli("doctor", env=env, cwd=tmp_path)
        shown = [line.strip() for line in out.splitlines()]
        start = shown.index(next(line for line in shown if "handlers:typo" in line))
        assert lines[1:] == shown[start + 1 : start + 3]  # each under the first, one a line

    async def test_a_bad_status_before_a_failing_import_is_named_too(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A misspelt status met before the import fails is one line, the failure the next."""
        (tmp_path / "handlers.py").write_text(
            "from receiver import on\n\n@on('succeded')\nasync def done(event, job):\n"
            "    pass\n\nimport requestz\n"
        )
        code, _, err = await run_cli(
            "serve", "--port", "1", env=self.quiet_env(env, tmp_path), cwd=tmp_path
        )
        assert 2 == code, err
        first, second = [said(line) for line in err.strip().splitlines()]
        assert first.startswith(f"handler handlers:done ({tmp_path / 'handlers.py'}, line 3): ")
        assert second.startswith("handlers module 'handlers' (") and "line 7" in second

    async def test_a_declared_generic_provider_is_known(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A handler for a generic provider declared in the settings starts (doctor: ok)."""
        (tmp_path / "handlers.py").write_text(
            "from receiver import on\n\n@on('*', provider='acme')\nasync def h(event, job):\n"
            "    pass\n"
        )
        env = {
            **self.quiet_env(env, tmp_path),
            "RECEIVER_GENERIC_PROVIDERS": "acme",
            "RECEIVER_ACME_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"acme" * 8).decode(),
            "RECEIVER_PUBLIC_URL": "http://127.0.0.1:1",
        }
        _, out, _ = await run_cli("doctor", "--json", env=env, cwd=tmp_path)
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert checks["handlers"]["ok"] is True, checks["handlers"]
        assert "handlers.h" in checks["handlers"]["detail"]


class TestNoHandlersModule:
    """Without a handlers module, `serve` says so truthfully, and `submit` says nothing."""

    async def started_and_stopped(self, tmp_path: Path, env: dict[str, str]) -> str:
        """What `serve` printed from its start to its stop, with the default module absent."""
        receiver = ReceiverProcess(tmp_path, handlers="handlers", env=env)
        receiver.env.pop("RECEIVER_HANDLERS")
        await receiver.start()
        try:
            receiver.terminate()
            assert await receiver.exited(timeout=30)
        finally:
            receiver.kill()
        return receiver.log.read_text()

    async def test_with_builtins_on_it_names_them(self, tmp_path: Path) -> None:
        """Built-in handlers still run, so the warning says only they are registered."""
        logged = await self.started_and_stopped(
            tmp_path,
            {"RECEIVER_DOWNLOAD_DIR": str(tmp_path / "downloads")},
        )
        assert (
            "no module 'handlers' found: only the built-in handlers are"
            " registered (builtin.download)" in logged
        )
        assert "no handlers are registered" not in logged

    async def test_without_builtins_it_says_none(self, tmp_path: Path) -> None:
        """With nothing registered at all, it says that callbacks fire nothing."""
        logged = await self.started_and_stopped(tmp_path, {})
        assert 1 == logged.count("no module 'handlers' found: no handlers are registered")

    async def test_submit_says_nothing_of_it(self, tmp_path: Path, env: dict[str, str]) -> None:
        """Submitting never runs handlers: no warning about them."""
        env = {key: value for key, value in env.items() if key != "RECEIVER_HANDLERS"}
        code, _, err = await run_cli(
            "submit", "runway_ai", "prompt=x", "duration=5", env=env, cwd=tmp_path
        )
        assert (0, "") == (code, err)

    async def test_worker_says_it_too(self, tmp_path: Path, env: dict[str, str]) -> None:
        """`receiver worker` runs handlers, so it warns the same way as it starts."""
        env = {key: value for key, value in env.items() if key != "RECEIVER_HANDLERS"}
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "worker",
            env={**os.environ, **env},
            cwd=tmp_path,
            stderr=asyncio.subprocess.PIPE,
        )
        assert worker.stderr is not None
        lines: list[str] = []
        try:
            while not lines or "worker running" not in lines[-1]:
                line = await asyncio.wait_for(worker.stderr.readline(), timeout=30)
                assert line, f"the worker exited: {lines}"
                lines.append(line.decode())
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), timeout=30)
        assert (
            "no module 'handlers' found: no handlers are registered;"
            " callbacks are stored and fire nothing"
        ) in [said(line.strip()) for line in lines]

    async def test_a_named_module_that_is_missing_stops_the_start(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """A module named in RECEIVER_HANDLERS must import: one line says what to check."""
        env = {**env, "RECEIVER_HANDLERS": "my_handlerz"}
        code, _, err = await run_cli("serve", "--port", "1", env=env, cwd=tmp_path)
        assert 2 == code
        assert "RECEIVER_HANDLERS: no module 'my_handlerz' found" in err.strip().splitlines()[-1]
