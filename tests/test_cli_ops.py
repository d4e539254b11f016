"""The operator subcommands run as real subprocesses, against the database and over the
admin API of a live receiver (the `mode` fixture runs each test both ways)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from procs import run_cli

from receiver.dispatch import DeliveryInfo, Registry
from receiver.models import Event, Job, Quarantined, Status, Update, new_id, now
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.store import NewJob, Write
from receiver.testing import LiveReceiver, running_receiver

API_KEY = "af-key"


class Flaky:
    """A handler that fails while `broken` is set and remembers the delivery ids it saw."""

    def __init__(self, registry: Registry) -> None:
        self.broken = True
        self.seen: list[str] = []

        @registry.on("*")
        async def flaky(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            self.seen.append(delivery.id)
            if self.broken:
                raise RuntimeError("downstream is down")


@pytest.fixture
def flaky() -> tuple[Registry, Flaky]:
    registry = Registry()
    return registry, Flaky(registry)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys={"apiframe": API_KEY})) as running:
        yield running


@pytest.fixture
async def live(
    tmp_path: Path, flaky: tuple[Registry, Flaky], sim: RunningSimulator
) -> AsyncIterator[LiveReceiver]:
    env = {
        "RECEIVER_HANDLER_MAX_ATTEMPTS": "1",
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": API_KEY,
    }
    async with running_receiver(tmp_path, handlers=flaky[0], env=env) as receiver:
        yield receiver


@pytest.fixture(params=["direct", "api"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(tmp_path: Path, live: LiveReceiver, sim: RunningSimulator, mode: str) -> dict[str, str]:
    """The CLI's variables: the live receiver's database, and its URL in API mode."""
    variables = {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_PUBLIC_URL": live.url,
        "RECEIVER_ADMIN_TOKEN": live.admin_token,
        "RECEIVER_HANDLERS": "",
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": API_KEY,
        "NO_COLOR": "",
    }
    if mode == "api":
        variables["RECEIVER_URL"] = live.url
    return variables


def bare_env(tmp_path: Path) -> dict[str, str]:
    """Variables for commands that need no receiver."""
    return {"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'bare.db'}", "RECEIVER_HANDLERS": ""}


async def add_job(live: LiveReceiver, task_id: str, *status: Status) -> str:
    at = now()
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id=task_id,
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(NewJob(job=job, token_hash=f"hash-{task_id}"))
    for step in status:
        progress = 0.5 if step is Status.RUNNING else None
        update = Update(status=step, raw_status=f"raw-{step.value}", progress=progress)
        await live.runtime.ingest.record(Write(update=update, source="poll", job_id=job.id))
    return job.id


async def settle(live: LiveReceiver, want: list[str], job_id: str | None = None) -> None:
    """Wait (10 s at most) until the deliveries' states are `want`."""
    states: list[str] = []
    for _ in range(200):
        states = [d.state.value for d in await live.runtime.store.list_deliveries(job_id=job_id)]
        if states == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries are {states}, not {want}")


class TestJobs:
    """`jobs` lists and filters jobs; `job` and `events` show one job's timeline."""

    async def test_jobs_table_and_filters(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path
    ) -> None:
        """The table shows each job with a progress bar; filters narrow it; JSON for scripts."""
        running = await add_job(live, "t1", Status.RUNNING)
        done = await add_job(live, "t2", Status.RUNNING, Status.SUCCEEDED)
        code, out, err = await run_cli("jobs", env=env, cwd=tmp_path)
        assert 0 == code, err
        lines = out.splitlines()
        assert ["ID", "PROVIDER", "STATUS", "PROGRESS", "AGE"] == lines[0].split()
        assert [done, running] == [line.split()[0] for line in lines[1:]]
        assert "50%" in lines[2] and "100%" in lines[1]
        assert "\x1b[" not in out  # not a terminal: no colour
        code, out, _ = await run_cli("jobs", "--status", "running", "--json", env=env, cwd=tmp_path)
        assert (0, [running]) == (code, [job["id"] for job in json.loads(out)["items"]])

    async def test_job_timeline(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path
    ) -> None:
        """`job` shows every event with its source and every delivery with its error."""
        job_id = await add_job(live, "t1", Status.RUNNING)
        await settle(live, ["dead"], job_id)
        code, out, err = await run_cli("job", job_id, env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "events (1)" in out and "poll" in out and "raw-running" in out
        assert "deliveries (1)" in out and "downstream is down" in out and "dead" in out
        code, out, _ = await run_cli("job", job_id, "--json", env=env, cwd=tmp_path)
        shown = json.loads(out)
        assert (job_id, ["running"], ["dead"]) == (
            shown["job"]["id"],
            [e["status"] for e in shown["events"]],
            [d["state"] for d in shown["deliveries"]],
        )
        code, out, _ = await run_cli("events", job_id, "--json", env=env, cwd=tmp_path)
        assert ["poll"] == [e["source"] for e in json.loads(out)["items"]]

    async def test_unknown_job_exits_4(self, env: dict[str, str], tmp_path: Path) -> None:
        """A job that does not exist is one line on stderr and exit code 4."""
        code, _, err = await run_cli("job", "job_nope", env=env, cwd=tmp_path)
        assert 4 == code
        assert 1 == len(err.strip().splitlines())


class TestDeadLettersAndReplay:
    """`deliveries --dead` lists dead letters; `replay` runs them again under the same id."""

    async def test_replay_one_delivery(
        self,
        live: LiveReceiver,
        env: dict[str, str],
        tmp_path: Path,
        flaky: tuple[Registry, Flaky],
    ) -> None:
        """The dead delivery is listed, replayed by id, and its handler sees the same id."""
        job_id = await add_job(live, "t1", Status.RUNNING)
        await settle(live, ["dead"], job_id)
        code, out, _ = await run_cli("deliveries", "--dead", "--json", env=env, cwd=tmp_path)
        [dead] = json.loads(out)["items"]
        assert (0, job_id, "dead") == (code, dead["job_id"], dead["state"])
        flaky[1].broken = False
        code, out, err = await run_cli("replay", dead["id"], env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "replayed 1 delivery" in out
        await settle(live, ["done"], job_id)
        assert [dead["id"], dead["id"]] == flaky[1].seen

    async def test_replay_by_job_handler_and_all(
        self,
        live: LiveReceiver,
        env: dict[str, str],
        tmp_path: Path,
        flaky: tuple[Registry, Flaky],
    ) -> None:
        """Each filter replays only what it names; with nothing left to replay the exit is 4."""
        first = await add_job(live, "t1", Status.RUNNING)
        second = await add_job(live, "t2", Status.RUNNING)
        third = await add_job(live, "t3", Status.RUNNING)
        await settle(live, ["dead", "dead", "dead"])
        code, out, _ = await run_cli("replay", "--job", first, "--json", env=env, cwd=tmp_path)
        assert (0, [first]) == (code, [d["job_id"] for d in json.loads(out)["items"]])
        await settle(live, ["dead"], first)  # still broken: it died again
        handler = (await live.runtime.store.list_deliveries())[0].handler
        code, out, _ = await run_cli(
            "replay", "--handler", "nobody", "--json", env=env, cwd=tmp_path
        )
        assert (4, []) == (code, json.loads(out)["items"])
        flaky[1].broken = False
        code, out, _ = await run_cli(
            "replay", "--handler", handler, "--job", second, env=env, cwd=tmp_path
        )
        assert 0 == code
        await settle(live, ["done"], second)
        code, out, _ = await run_cli("replay", "--all-dead", "--json", env=env, cwd=tmp_path)
        assert {first, third} == {d["job_id"] for d in json.loads(out)["items"]}
        await settle(live, ["done", "done", "done"])
        code, _, _ = await run_cli("replay", "--all-dead", env=env, cwd=tmp_path)
        assert 4 == code

    @pytest.mark.parametrize(
        "args", [(), ("dlv_x", "--all-dead"), ("--all-dead", "--include-done")]
    )
    async def test_ambiguous_replay_exits_2(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        """A replay must name exactly one kind of target."""
        code, _, err = await run_cli("replay", *args, env=bare_env(tmp_path), cwd=tmp_path)
        assert 2 == code
        assert "receiver replay:" in err


class TestHandlerTraceback:
    """A failed delivery's error shows where the handler raised it: file, line and source."""

    async def test_deliveries_and_job_show_the_handlers_frame(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path
    ) -> None:
        """The table keeps the exception on its row; the traceback follows, with the line."""
        job_id = await add_job(live, "t1", Status.RUNNING)
        await settle(live, ["dead"], job_id)
        [dead] = await live.runtime.store.list_deliveries(job_id=job_id)
        raising = next(
            number
            for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1)
            if 'raise RuntimeError("downstream is down")' in line
        )
        where = f'File "{__file__}", line {raising}, in flaky'
        for command in (("deliveries", "--dead"), ("job", job_id)):
            code, out, err = await run_cli(*command, env=env, cwd=tmp_path)
            assert 0 == code, err
            [row] = [line for line in out.splitlines() if line.strip().startswith(f"{dead.id} ")]
            assert row.rstrip().endswith("RuntimeError: downstream is down")
            assert where in out, out
            assert 'raise RuntimeError("downstream is down")' in out.split(where, 1)[1]


class TestQuarantine:
    """`quarantine` shows rejected requests and why, never the token."""

    async def test_reasons(self, live: LiveReceiver, env: dict[str, str], tmp_path: Path) -> None:
        """An unknown token and a missing secret are listed in plain words."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            await client.post("/hooks/apiframe/guessed-token-123", json={})
        code, out, err = await run_cli("quarantine", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "unknown job token" in out
        assert "guessed-token-123" not in out
        code, out, _ = await run_cli("quarantine", "--json", env=env, cwd=tmp_path)
        assert ["unknown_token"] == [q["reason"] for q in json.loads(out)["items"]]

    async def test_a_reason_with_its_detail(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path
    ) -> None:
        """A stale signature is told in words, with the skew the receiver measured."""
        kept = "stale_signature: timestamp 400 s behind this clock (tolerance 300 s)"
        await live.runtime.store.quarantine(
            Quarantined(
                id=new_id("qua"),
                received_at=now(),
                provider="acme",
                reason=kept,
                status_code=401,
                method="POST",
                path="/hooks/acme",
                query="",
                headers={},
                body=b"{}",
            )
        )
        code, out, err = await run_cli("quarantine", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "webhook-timestamp too old" in out
        assert "400 s behind this clock" in out


class TestSubmitWait:
    """`submit --wait` follows the job to its end, then prints the result URL."""

    async def test_waits_for_success(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """The provider's callbacks reach the live receiver; the CLI sees the job succeed."""
        sim.config.step_delay = 1.0  # slow enough to see it running
        code, out, err = await run_cli(
            "submit",
            "apiframe",
            "prompt=a fox",
            "--wait",
            "--interval",
            "0.1",
            env=env,
            cwd=tmp_path,
        )
        assert 0 == code, err
        lines = out.splitlines()
        assert "succeeded" in lines[-2]
        assert lines[-1].startswith(sim.url)
        assert any(line.startswith("running") for line in lines)

    async def test_a_failed_job_exits_1(
        self, env: dict[str, str], tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """A job that ends failed exits 1 and shows the provider's error."""
        sim.config.fail = True
        code, out, _ = await run_cli(
            "submit",
            "apiframe",
            "prompt=x",
            "--wait",
            "--json",
            "--interval",
            "0.1",
            env=env,
            cwd=tmp_path,
        )
        assert (1, "failed") == (code, json.loads(out)["status"])

    async def test_gives_up_after_the_timeout(
        self, env: dict[str, str], tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """A job that never ends is left after --timeout with exit code 5."""
        sim.config.lose = True
        sim.config.step_delay = 30
        code, _, err = await run_cli(
            "submit",
            "apiframe",
            "prompt=x",
            "--wait",
            "--timeout",
            "0.5",
            env=env,
            cwd=tmp_path,
        )
        assert 5 == code, err


class TestDoctor:
    """`doctor` checks the settings, the database and that the public URL reaches us."""

    async def test_all_good(self, env: dict[str, str], tmp_path: Path, mode: str) -> None:
        """A reachable public URL passes; with --url it is proven to be the same receiver."""
        code, out, err = await run_cli("doctor", "--json", env=env, cwd=tmp_path)
        assert 0 == code, out + err
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert checks["database"]["ok"] and checks["providers"]["ok"]
        assert "apiframe" in checks["providers"]["detail"]
        # Loopback is a warning (providers cannot reach it), not a failure.
        assert checks["public URL"]["ok"] is None
        assert ("this receiver" if mode == "api" else "a receiver") in checks["public URL"][
            "detail"
        ]

    async def test_public_url_reaching_another_receiver_fails(
        self, env: dict[str, str], tmp_path: Path, mode: str
    ) -> None:
        """A public URL that answers from a different receiver is caught (with --url)."""
        async with running_receiver(tmp_path / "other") as other:
            code, out, _ = await run_cli(
                "doctor", "--json", env={**env, "RECEIVER_PUBLIC_URL": other.url}, cwd=tmp_path
            )
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        if mode == "api":
            assert (1, False) == (code, checks["public URL"]["ok"])
            assert "another receiver" in checks["public URL"]["detail"]
        else:
            assert 0 == code

    async def test_unreachable_public_url_fails(self, env: dict[str, str], tmp_path: Path) -> None:
        """A public URL nothing answers at is a failure and exit code 1."""
        env = {**env, "RECEIVER_PUBLIC_URL": "http://127.0.0.1:1"}
        code, out, _ = await run_cli("doctor", env=env, cwd=tmp_path)
        assert 1 == code
        assert "FAIL" in out and "public URL" in out

    async def test_bad_setting_fails(self, env: dict[str, str], tmp_path: Path) -> None:
        """A setting that does not load is reported by name."""
        env = {**env, "RECEIVER_PORT": "0"}
        code, out, _ = await run_cli("doctor", env=env, cwd=tmp_path)
        assert 1 == code
        assert "RECEIVER_PORT" in out


class TestTerminal:
    """Colour on a terminal only, never with NO_COLOR; `--help` names the variables."""

    async def _on_a_terminal(self, env: dict[str, str], cwd: Path, *args: str) -> str:
        primary, secondary = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "receiver",
                *args,
                env={**os.environ, **env},
                cwd=cwd,
                stdout=secondary,
                stderr=asyncio.subprocess.PIPE,
            )
            os.close(secondary)
            await asyncio.wait_for(process.wait(), timeout=60)
            chunks = []
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode()
        finally:
            os.close(primary)

    async def test_colour_on_a_terminal_unless_no_color(
        self, live: LiveReceiver, env: dict[str, str], tmp_path: Path
    ) -> None:
        """On a terminal the status is coloured; NO_COLOR turns it off."""
        await add_job(live, "t1", Status.RUNNING, Status.SUCCEEDED)
        env = {key: value for key, value in env.items() if key != "NO_COLOR"}
        env["TERM"] = "xterm"
        coloured = await self._on_a_terminal({**env, "NO_COLOR": ""}, tmp_path, "jobs")
        assert "\x1b[32msucceeded\x1b[0m" in coloured
        plain = await self._on_a_terminal({**env, "NO_COLOR": "1"}, tmp_path, "jobs")
        assert "succeeded" in plain and "\x1b[" not in plain

    @pytest.mark.parametrize(
        "command", ["jobs", "job", "events", "deliveries", "quarantine", "replay", "doctor"]
    )
    async def test_help_names_the_variables(self, tmp_path: Path, command: str) -> None:
        """Every reading subcommand names the variables that set its options."""
        code, out, _ = await run_cli(command, "--help", env=bare_env(tmp_path), cwd=tmp_path)
        assert 0 == code
        for variable in ("RECEIVER_DATABASE_URL", "RECEIVER_URL", "RECEIVER_ADMIN_TOKEN"):
            assert variable in out
