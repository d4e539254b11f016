"""The README's examples, run as written: the testing-kit example and the sandbox round trips.

The blocks are read out of README.md (each follows a `<!-- ...: tests/test_readme_example.py
runs this block -->` line), so the documentation and what is tested cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver.serving import bind

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(kind: str, language: str) -> list[str]:
    """The fenced `language` blocks that follow a `<!-- kind: ... -->` marker."""
    pattern = rf"<!-- {kind}: [^>]*-->\n```{language}\n(.*?)```"
    return re.findall(pattern, README.read_text(), flags=re.S)


def _free_port() -> int:
    sock = bind()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


class TestTestingKitExample:
    """The README's testing-kit example passes as a user's test module would run it."""

    async def test_example_tests_pass(self, tmp_path: Path) -> None:
        [source] = blocks("testing-kit", "python")
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(source, str(README), "exec"), namespace)
        tests = [name for name in namespace if name.startswith("test_")]
        assert ["test_save_gets_the_result", "test_alert_is_retried_then_dead"] == tests
        for name in tests:
            directory = tmp_path / name
            directory.mkdir()
            await namespace[name](directory)


async def _run_sandbox(script: str, tmp_path: Path) -> str:
    """Run a README shell block with bash: its own ports, this environment's `receiver`."""
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
    """The README's sandbox commands, run as written, end with succeeded jobs."""

    async def test_simulator_calls_back(self, tmp_path: Path) -> None:
        script = blocks("sandbox", "sh")[0]
        out = await _run_sandbox(script, tmp_path)
        row = [line for line in out.splitlines() if line.startswith("job_")][-1]  # `jobs`
        assert ["apiframe", "succeeded"] == row.split()[1:3]
        assert "100%" in row.split()

    async def test_trigger_and_download(self, tmp_path: Path) -> None:
        script = blocks("sandbox", "sh")[1]
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
