"""An unauthenticated provider's final callback is confirmed with its status API.

rixapi posts without any credential, so the job's URL token is all that vouches for a
body. A leaked token must not be able to end a job with a result of its choosing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from receiver.dispatch import Registry
from receiver.models import Job, Status
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.testing import LiveReceiver, running_receiver

FORGED = "https://attacker.example/evil.mp4"


def _env(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_RIXAPI_BASE_URL": sim.base_url("rixapi"),
        "RECEIVER_RIXAPI_API_KEY": "key",
        "RECEIVER_POLL_INTERVAL": "0.1",
        **extra,
    }


async def submit(live: LiveReceiver) -> str:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        answer = await client.post(
            "/jobs", json={"provider": "rixapi", "input": {"prompt": "cat", "model": "gen3"}}
        )
    assert 201 == answer.status_code, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def wait_final(live: LiveReceiver, job_id: str, timeout: float = 10) -> Job:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = await live.runtime.store.get_job(job_id)
        if job is not None and job.status.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not end")


def succeeded_calls(registry_calls: list[tuple[str, str]]) -> list[str]:
    return [url for status, url in registry_calls if status == "succeeded"]


class TestConfirmTerminal:
    """Final states from rixapi's unauthenticated posts go through its status API."""

    async def test_a_forged_success_is_not_believed(self, tmp_path: Path) -> None:
        """A success posted with the job's token while the task still runs changes nothing."""
        calls: list[tuple[str, str]] = []
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            calls.append((event.status.value, event.result_url or ""))

        async with (
            run_simulator(SimConfig(step_delay=60)) as sim,
            running_receiver(tmp_path, env=_env(sim), handlers=registry) as live,
        ):
            job_id = await submit(live)
            [task] = sim.tasks()
            assert task.callback_url is not None
            forged = {"task_id": task.task_id, "status": "3", "video_url": FORGED}
            async with httpx.AsyncClient() as client:
                answer = await client.post(task.callback_url, json=forged)
            assert 202 == answer.status_code
            assert {"ok": True, "confirming": True} == answer.json()
            end = time.monotonic() + 5
            while sim.status_calls("rixapi") == 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await live.runtime.dispatcher.drain(timeout=5)
            job = await live.runtime.store.get_job(job_id)
            requests = await live.runtime.store.list_requests(job_id)
        assert job is not None
        assert not job.status.terminal
        assert job.result_url is None
        assert sim.status_calls("rixapi") >= 1, "the status API was asked"
        assert [] == succeeded_calls(calls)
        assert any(FORGED.encode() in raw.body for raw in requests), "the body is kept"

    async def test_a_real_success_ends_the_job_with_the_providers_answer(
        self, tmp_path: Path
    ) -> None:
        """The genuine final callback leads to a pull that ends the job, handlers once."""
        calls: list[tuple[str, str]] = []
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            calls.append((event.status.value, event.result_url or ""))

        async with run_simulator(SimConfig(step_delay=0.05)) as sim:
            async with running_receiver(tmp_path, env=_env(sim), handlers=registry) as live:
                job_id = await submit(live)
                job = await wait_final(live, job_id)
                await live.runtime.dispatcher.drain(timeout=5)
                events = await live.runtime.store.list_events(job_id)
            [task] = sim.tasks()
        assert Status.SUCCEEDED == job.status
        assert task.result_url == job.result_url
        assert "poll" == next(e for e in events if e.status is Status.SUCCEEDED).source
        assert [task.result_url] == succeeded_calls(calls)

    async def test_confirmation_can_be_switched_off(self, tmp_path: Path) -> None:
        """RECEIVER_RIXAPI_CONFIRM_TERMINAL=false believes the callback as sent."""
        async with run_simulator(SimConfig(step_delay=60)) as sim:
            env = _env(sim, RECEIVER_RIXAPI_CONFIRM_TERMINAL="false")
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live)
                [task] = sim.tasks()
                assert task.callback_url is not None
                body = {"task_id": task.task_id, "status": "3", "video_url": FORGED}
                async with httpx.AsyncClient() as client:
                    answer = await client.post(task.callback_url, json=body)
                job = await live.runtime.store.get_job(job_id)
        assert 200 == answer.status_code
        assert job is not None and FORGED == job.result_url
        assert 0 == sim.status_calls("rixapi")
