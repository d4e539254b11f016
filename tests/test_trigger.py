"""The sandbox: `receiver trigger`, `POST /jobs/{id}/trigger` and `receiver simulate`'s switches."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import run_cli

from receiver.dispatch import Registry
from receiver.serving import bind
from receiver.simulator import run_simulator
from receiver.testing import TEST_ADMIN_TOKEN, handler_kit, running_receiver

# The provider's own word for "succeeded", as its adapter reads it from the triggered body.
RAW_SUCCESS = {
    "apiframe": "finished",
    "rixapi": "3",
    "aivideoapi": "success",
    "artvisum": "completed",
    "runway_ai": "completed",
}


class TestTriggerRoute:
    """A triggered statement goes through the provider's adapter, the store and the handlers."""

    @pytest.mark.parametrize("provider", sorted(RAW_SUCCESS))
    async def test_each_provider_succeeds_through_its_adapter(
        self, tmp_path: Path, provider: str
    ) -> None:
        """The job succeeds with a result URL; the event keeps the provider's raw status."""
        registry = Registry()
        seen: list[tuple[str, str | None]] = []

        @registry.on("succeeded")
        async def done(event: Any, job: Any) -> None:
            seen.append((event.source, event.result_url))

        async with handler_kit(tmp_path, registry) as kit:
            job = await kit.job(provider)
            answer = await kit.trigger(job, "succeeded", result_url="https://cdn.test/v.mp4")
            assert 200 == answer.status_code, answer.text
            await kit.settle()
            stored = await kit.get(job)
            [event] = await kit.runtime.store.list_events(job.id)
            [request] = await kit.runtime.store.list_requests(job.id)
        assert ("succeeded", "https://cdn.test/v.mp4") == (stored.status.value, stored.result_url)
        assert ("trigger", RAW_SUCCESS[provider]) == (event.source, event.raw_status)
        assert [("trigger", "https://cdn.test/v.mp4")] == seen
        assert "[redacted]" == request.headers["authorization"]
        assert answer.json()["payload"] == json.loads(request.body)

    async def test_order_and_late_statements(self, tmp_path: Path) -> None:
        """Running then succeeded apply; a failure after success is late and fires nothing."""
        async with handler_kit(tmp_path, Registry()) as kit:
            job = await kit.job("rixapi")
            answers = [
                (await kit.trigger(job, status, progress=0.4)).json()
                for status in ("running", "succeeded", "failed")
            ]
        assert [("running", "applied"), ("succeeded", "applied"), ("succeeded", "late")] == [
            (answer["status"], answer["disposition"]) for answer in answers
        ]
        assert "1" == answers[0]["payload"]["status"]

    async def test_same_shape_as_the_simulator_sends(self, tmp_path: Path) -> None:
        """The triggered rixapi body has exactly the fields the simulated provider posts."""
        async with run_simulator() as sim:
            env = {
                "RECEIVER_RIXAPI_BASE_URL": sim.base_url("rixapi"),
                "RECEIVER_RIXAPI_API_KEY": "k",
            }
            async with (
                running_receiver(tmp_path, env=env) as live,
                httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client,
            ):
                created = await client.post(
                    "/jobs", json={"provider": "rixapi", "input": {"prompt": "a fox"}}
                )
                await sim.wait_idle()
                tracked = await client.post("/jobs", json={"provider": "rixapi", "task_id": "t9"})
                answer = await client.post(
                    f"/jobs/{tracked.json()['id']}/trigger", json={"status": "succeeded"}
                )
        assert 201 == created.status_code
        sent = sim.tasks()[0].callbacks[-1].body
        assert sorted(sent) == sorted(answer.json()["payload"])
        # The default result is media the simulator serves.
        assert answer.json()["payload"]["video_url"].startswith(sim.url + "/_sim/media/")

    @pytest.mark.parametrize(
        ("body", "headers", "status_code"),
        [
            ({"status": "succeeded"}, {}, 401),
            ({"status": "succeeded"}, {"Authorization": "Bearer wrong"}, 401),
            ({"status": "done"}, None, 400),
            ({"status": "succeeded", "provider": "apiframe"}, None, 400),
            ({"status": "running", "progress": 5}, None, 400),
        ],
    )
    async def test_refusals(
        self,
        tmp_path: Path,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        status_code: int,
    ) -> None:
        """No admin token, a bad status, another provider or bad progress change nothing."""
        async with handler_kit(tmp_path, Registry()) as kit:
            job = await kit.job("rixapi")
            answer = await kit.client.post(
                f"{kit.receiver.url}/jobs/{job.id}/trigger",
                json=body,
                headers=kit.receiver.admin_headers if headers is None else headers,
            )
            events = await kit.runtime.store.list_events(job.id)
        assert status_code == answer.status_code
        assert [] == events


class TestTriggerCommand:
    """`receiver trigger PROVIDER STATUS --job ID` against a running receiver."""

    async def test_trigger_then_refusals(self, tmp_path: Path) -> None:
        async with (
            running_receiver(tmp_path) as live,
            httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client,
        ):
            job = (await client.post("/jobs", json={"provider": "rixapi", "task_id": "t1"})).json()
            # The token file `serve` would have written: the command reads it when no
            # RECEIVER_ADMIN_TOKEN is set.
            token_file = Path(str(tmp_path / "receiver.db") + ".admin-token")
            token_file.write_text(live.admin_token + "\n")
            token_file.chmod(0o600)
            env = {
                "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
                "RECEIVER_HANDLERS": "",
            }
            code, out, err = await run_cli(
                "trigger", "rixapi", "succeeded", "--job", job["id"], "--url", live.url,
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert 0 == code, err
            assert out.startswith(f"{job['id']}  succeeded  event evt_")
            stored = (await client.get(f"/jobs/{job['id']}")).json()
            assert "succeeded" == stored["status"]

            code, _, err = await run_cli(
                "trigger", "apiframe", "succeeded", "--job", job["id"], "--url", live.url,
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert (2, f"receiver: 400 job {job['id']} is a rixapi job, not apiframe\n") == (
                code,
                err,
            )
            code, _, err = await run_cli(
                "trigger", "rixapi", "succeeded", "--job", "job_nope", "--url", live.url,
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert (4, "receiver: 404 no such job\n") == (code, err)  # 4: nothing found
            code, _, err = await run_cli(
                "trigger", "rixapi", "succeeded", "--job", job["id"], "--url", live.url,
                env={**env, "RECEIVER_ADMIN_TOKEN": "wrong-" + "w" * 40}, cwd=tmp_path,
            )  # fmt: skip
            assert (2, "receiver: 401 admin token required\n") == (code, err)

    async def test_no_receiver_running(self, tmp_path: Path) -> None:
        sock = bind()
        port = sock.getsockname()[1]
        sock.close()
        code, _, err = await run_cli(
            "trigger", "rixapi", "succeeded", "--job", "job_x", "--wait", "0.5",
            "--url", f"http://127.0.0.1:{port}",
            env={"RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN}, cwd=tmp_path,
        )  # fmt: skip
        assert 3 == code  # 3: the receiver is unavailable
        assert f"cannot reach the receiver at http://127.0.0.1:{port}" in err


class TestSimulateSwitches:
    """`receiver simulate` exposes the simulator's switches as flags."""

    async def test_flags_set_the_config(self, tmp_path: Path) -> None:
        sock = bind()
        port = sock.getsockname()[1]
        sock.close()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver", "simulate", "--port", str(port),
            "--fail", "--duplicate", "--late", "--lose", "--wrapped", "--step-delay", "0.5",
            "--create-error", "503", "--api-key", "rixapi=rk", "--expire-results", "2",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            banner = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            assert b"switches: fail, duplicate, late, lose, wrapped" in banner
            async with httpx.AsyncClient() as client:
                for _ in range(100):
                    try:
                        config = (await client.get(f"http://127.0.0.1:{port}/_sim/config")).json()
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.1)
        finally:
            process.terminate()
            await process.wait()
        expected = {
            "fail": True,
            "duplicate": True,
            "late": True,
            "lose": True,
            "wrapped": True,
            "step_delay": 0.5,
            "create_error": 503,
            "expire_results": 2,
            "api_keys": {"rixapi": "rk"},
        }
        assert expected == {key: config[key] for key in expected}

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--api-key", "nope=k"], "--api-key: unknown provider ['nope']"),
            (["--create-error", "200"], "simulate: Expected `int` >= 400"),
            (["--expire-results", "-1"], "simulate: Expected `int` >= 0"),
        ],
    )
    async def test_bad_flags(self, tmp_path: Path, args: list[str], message: str) -> None:
        code, _, err = await run_cli("simulate", *args, env={}, cwd=tmp_path)
        assert 2 == code
        assert message in err
