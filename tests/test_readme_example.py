"""The documentation's examples, run as written: the sandbox round trips, the handlers and
testing-kit examples, and the configuration examples.

The blocks are read out of README.md and docs/*.md (each follows a `<!-- KIND:
tests/test_readme_example.py runs this block -->` line), so the documentation and what is
tested cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from receiver.config import load_settings
from receiver.providers.generic import split_secrets
from receiver.serving import bind
from receiver.standard_webhooks import mint_whsec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
_MARKER = r"<!-- ([\w-]+): tests/test_readme_example\.py [^>]*-->\n"
# Every kind of marked block some test below runs.
KINDS = {"sandbox", "handlers", "testing-kit", "config", "config-env"}


class Block(NamedTuple):
    """A marked block: the file it is in (for tracebacks and messages) and its text."""

    path: Path
    source: str


def blocks(kind: str, language: str) -> list[Block]:
    """The fenced `language` blocks after a `<!-- kind: ... -->` marker, README first."""
    pattern = rf"<!-- {kind}: [^>]*-->\n```{language}\n(.*?)```"
    return [
        Block(path, source)
        for path in DOCUMENTS
        for source in re.findall(pattern, path.read_text(), flags=re.S)
    ]


def _placeholder_secrets(text: str) -> str:
    """`whsec_...` (and `whsec_OLD...`) stand for a secret of the reader's: mint real ones."""
    return re.sub(r"whsec_\w*\.\.\.", lambda _: mint_whsec(), text)


class TestEveryMarkedBlockRuns:
    """Every marker in README.md and docs/ precedes a fenced block that a test here runs."""

    def test_every_marker_is_followed_by_a_block(self) -> None:
        for path in DOCUMENTS:
            text = path.read_text()
            markers = re.findall(_MARKER, text)
            with_block = re.findall(_MARKER + r"```\w+\n.*?```", text, flags=re.S)
            assert len(markers) == len(with_block), f"{path}: a marker without its block"

    def test_every_marker_is_a_kind_that_runs(self) -> None:
        found = {kind for path in DOCUMENTS for kind in re.findall(_MARKER, path.read_text())}
        assert found <= KINDS, f"no test runs blocks marked {sorted(found - KINDS)}"
        assert KINDS == found, f"no block is marked {sorted(KINDS - found)} any more"

    def test_each_sandbox_block_has_its_test(self) -> None:
        # TestSandboxRoundTrips checks each block's own outcome, one test per block.
        assert 2 == len(blocks("sandbox", "sh")), "a new sandbox block needs its own test"


def _free_port() -> int:
    sock = bind()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


class TestTestingKitExample:
    """The README's testing-kit example passes as a user's test module would run it."""

    async def test_example_tests_pass(self, tmp_path: Path) -> None:
        [(path, source)] = blocks("testing-kit", "python")
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(source, str(path), "exec"), namespace)
        tests = [name for name in namespace if name.startswith("test_")]
        assert ["test_save_gets_the_result", "test_alert_is_retried_then_dead"] == tests
        for name in tests:
            directory = tmp_path / name
            directory.mkdir()
            await namespace[name](directory)


async def _run_sandbox(script: str, tmp_path: Path) -> str:
    """Run a documented shell block with bash: its own ports, this environment's `receiver`."""
    simulator, receiver = _free_port(), _free_port()
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    script = script.replace("9000", str(simulator))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECEIVER_")}
    env.update(
        RECEIVER_PORT=str(receiver),
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{receiver}",
        RECEIVER_HANDLERS="",
    )
    # The background servers are stopped however the block ends.
    wrapped = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        wrapped,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert 0 == process.returncode, out.decode() + err.decode()
    return out.decode()


@pytest.mark.slow
class TestSandboxRoundTrips:
    """The sandbox commands, run as written, end with succeeded jobs."""

    async def test_simulator_calls_back(self, tmp_path: Path) -> None:
        script = blocks("sandbox", "sh")[0].source
        out = await _run_sandbox(script, tmp_path)
        row = [line for line in out.splitlines() if line.startswith("job_")][-1]  # `jobs`
        assert ["apiframe", "succeeded"] == row.split()[1:3]
        assert "100%" in row.split()

    async def test_trigger_and_download(self, tmp_path: Path) -> None:
        script = blocks("sandbox", "sh")[1].source
        out = await _run_sandbox(script, tmp_path)
        match = re.search(r"^(job_\w+)  running  event evt_", out, flags=re.M)
        assert match is not None, out
        job_id = match.group(1)
        assert f"{job_id}  running  event evt_" in out
        assert f"{job_id}  succeeded  event evt_" in out
        assert re.search(r"^\s*status\s+succeeded\b", out, flags=re.M), out
        result = tmp_path / "videos" / job_id / "result.mp4"
        path = re.escape(str(result.resolve()))
        assert re.search(rf"^\s*file\s+result {path} ", out, flags=re.M), out
        assert result.read_bytes().startswith(b"\x00\x00\x00\x18ftyp")
        assert (tmp_path / "videos" / job_id / "preview.jpg").is_file()
        listed = [line.split()[0] for line in out.splitlines() if line.startswith("job_")]
        assert job_id == listed[-1]


_RUN_HANDLERS = """
import asyncio
from pathlib import Path

from receiver.dispatch import load_handlers
from receiver.providers import PROVIDERS
from receiver.registration import check_handlers
from receiver.testing import handler_kit


async def main():
    handlers = load_handlers("readme_handlers")
    check_handlers(handlers, PROVIDERS)  # what stops `serve` at start
    async with handler_kit(Path.cwd(), handlers) as kit:
        job = await kit.job("apiframe")
        await kit.callback(job, "succeeded", result_url="https://cdn.test/v.mp4")
        for run in await kit.settle():
            print("ran", run.handler, run.event.status, run.state, run.attempts)


asyncio.run(main())
"""


@pytest.mark.slow
class TestHandlersExample:
    """The README's handlers example is a module `serve` accepts, and its handlers run."""

    async def test_module_loads_and_runs(self, tmp_path: Path) -> None:
        [(_, source)] = blocks("handlers", "python")
        (tmp_path / "readme_handlers.py").write_text(source)
        env = {key: value for key, value in os.environ.items() if not key.startswith("RECEIVER_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RUN_HANDLERS,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert 0 == process.returncode, out.decode() + err.decode()
        runs = sorted(line for line in out.decode().splitlines() if line.startswith("ran "))
        assert [
            "ran readme_handlers.log_all succeeded done 1",
            "ran readme_handlers.save succeeded done 1",
        ] == runs
        assert re.search(r"^job_\w+ succeeded 1\.0$", out.decode(), flags=re.M), out.decode()


def _reaches(settings: Any, raw: dict[str, Any], where: str = "") -> None:
    """Every value of a parsed TOML document is the setting it names in `settings`."""
    for key, value in raw.items():
        found = settings[key] if isinstance(settings, dict) else getattr(settings, key)
        if isinstance(value, dict):
            _reaches(found, value, f"{where}{key}.")
        else:
            assert value == found, f"{where}{key}"


class TestConfigurationExamples:
    """Each documented receiver.toml and set of variables loads, every value where it says."""

    @pytest.mark.parametrize("block", blocks("config", "toml"), ids=lambda block: block.path.name)
    def test_toml_loads(self, block: Block, tmp_path: Path) -> None:
        text = _placeholder_secrets(block.source)
        (tmp_path / "receiver.toml").write_text(text)
        settings = load_settings({}, config_file=tmp_path / "receiver.toml")
        _reaches(settings, tomllib.loads(text))

    @pytest.mark.parametrize("block", blocks("config-env", "sh"), ids=lambda block: block.path.name)
    def test_variables_load(
        self, block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        environ: dict[str, str] = {}
        for line in _placeholder_secrets(block.source).splitlines():
            words = shlex.split(line, comments=True)
            assert "export" == words[0], line
            for word in words[1:]:
                name, _, value = word.partition("=")
                environ[name] = value
        monkeypatch.chdir(tmp_path)  # no receiver.toml here: the variables alone
        settings = load_settings(environ)
        assert ["acme"] == list(settings.generic)
        assert 2 == len(split_secrets(settings.generic["acme"].webhook_secret))
