"""Missed callbacks heal themselves: deadlines, overdue polls, give-up, and provider limits.

Every test runs a real receiver against the provider simulator over HTTP, with the
simulator losing callbacks or its status API misbehaving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.dispatch import Registry
from receiver.models import Job, Status, now
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.store.base import NewJob
from receiver.store.sqlite import SQLiteStore
from receiver.testing import LiveReceiver, running_receiver

CALLBACK_PROVIDERS = ["aivideoapi", "apiframe", "rixapi"]
INPUTS: dict[str, dict[str, Any]] = {
    "apiframe": {"prompt": "A colossal mech suit", "generation_type": "text2video"},
    "rixapi": {"prompt": "cat", "model": "gen3", "ratio": "16:9", "options": {"seconds": 10}},
    "aivideoapi": {"text_prompt": "Space travel", "structure_transformation": 0.5},
    "artvisum": {"prompt": "masterpiece, cinematic", "negative_prompt": "blur"},
}


def _env(sim: RunningSimulator, **settings: str) -> dict[str, str]:
    env = {f"RECEIVER_{key.upper()}": value for key, value in settings.items()}
    for provider in INPUTS:
        env[f"RECEIVER_{provider.upper()}_BASE_URL"] = sim.base_url(provider)
        env[f"RECEIVER_{provider.upper()}_API_KEY"] = "key"
    return env


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(step_delay=0.05, lose=True)) as running:
        yield running


class Fired:
    """Statuses each job's handlers saw."""

    def __init__(self) -> None:
        self.statuses: dict[str, list[str]] = {}

    def registry(self) -> Registry:
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            self.statuses.setdefault(job.id, []).append(event.status.value)

        return registry


async def submit(live: LiveReceiver, provider: str) -> str:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        answer = await client.post("/jobs", json={"provider": provider, "input": INPUTS[provider]})
    assert 201 == answer.status_code, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def job_of(live: LiveReceiver, job_id: str) -> Job:
    job = await live.runtime.store.get_job(job_id)
    assert job is not None
    return job


async def wait_for(live: LiveReceiver, job_id: str, timeout: float = 10.0) -> Job:
    """The job once it is terminal."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = await job_of(live, job_id)
        if job.status.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} still {job.status} after {timeout} s")


class TestDeadlines:
    """A job whose callbacks never come is polled once its deadline passes, and ends."""

    @pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
    async def test_lost_callbacks_are_recovered_by_polling(
        self, tmp_path: Path, sim: RunningSimulator, provider: str
    ) -> None:
        """With every callback lost, the status API brings the job to succeeded."""
        fired = Fired()
        env = _env(sim, deadline="0.3", poll_interval="0.1")
        async with running_receiver(tmp_path, env=env, handlers=fired.registry()) as live:
            job_id = await submit(live, provider)
            job = await wait_for(live, job_id)
        assert Status.SUCCEEDED == job.status
        assert sim.status_calls(provider) >= 1
        assert "succeeded" == fired.statuses[job_id][-1]
        assert all(not task.callbacks for task in sim.tasks())

    async def test_callbacks_on_time_cause_no_polls(self, tmp_path: Path) -> None:
        """A job whose callbacks arrive before the deadline never touches the status API."""
        async with run_simulator(SimConfig(step_delay=0.05)) as sim:
            env = _env(sim, deadline="30")
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live, "apiframe")
                job = await wait_for(live, job_id)
            assert Status.SUCCEEDED == job.status
            assert 0 == sim.status_calls("apiframe")

    async def test_news_pushes_the_deadline_back(self, tmp_path: Path) -> None:
        """Progress callbacks more often than the deadline keep the status API untouched."""
        # A callback every 1.0 s, the deadline 1.6 s after the last news, the job 2.0 s long.
        async with run_simulator(SimConfig(step_delay=1.0)) as sim:
            env = _env(sim, deadline="1.6", poll_interval="0.1")
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live, "apiframe")
                job = await wait_for(live, job_id, timeout=15)
            assert Status.SUCCEEDED == job.status
            assert job.updated_at - job.created_at > 1.6, "the job outlived its first deadline"
            assert 0 == sim.status_calls("apiframe")

    async def test_jobs_still_open_at_their_give_up_age_fail_with_a_reason(
        self, tmp_path: Path
    ) -> None:
        """A task that never ends is failed at the give-up age, and failed handlers fire."""
        fired = Fired()
        async with run_simulator(SimConfig(step_delay=60, lose=True)) as sim:
            env = _env(sim, deadline="0.2", poll_interval="0.1", give_up_after="1")
            async with running_receiver(tmp_path, env=env, handlers=fired.registry()) as live:
                job_id = await submit(live, "apiframe")
                job = await wait_for(live, job_id)
                events = await live.runtime.store.list_events(job_id)
        assert Status.FAILED == job.status
        assert "gave_up" == job.error_code
        assert job.error is not None and "RECEIVER_GIVE_UP_AFTER" in job.error
        assert "receiver" == events[-1].source
        assert sim.status_calls("apiframe") >= 1, "it asked before giving up"
        assert "failed" == fired.statuses[job_id][-1]

    async def test_open_jobs_are_reconciled_at_start(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """A job left open with nothing scheduled (we were down) is checked when we start."""
        async with run_simulator(SimConfig(step_delay=0.01, lose=True)) as done_sim:
            async with httpx.AsyncClient() as client:
                created = await client.post(
                    done_sim.base_url("apiframe") + "/runway-imagine",
                    json={"prompt": "x", "generation_type": "text2video"},
                    headers={"Authorization": "key"},
                )
            task_id = created.json()["task_id"]
            await done_sim.wait_idle()
            store = SQLiteStore(f"sqlite:///{tmp_path / 'receiver.db'}")
            await store.open()
            old = now() - 600
            job = Job(
                id="job_left_open",
                provider="apiframe",
                task_id=task_id,
                status=Status.RUNNING,
                created_at=old,
                updated_at=old,
            )
            await store.create_job(NewJob(job=job, next_poll_at=None))
            await store.close()
            env = _env(done_sim, deadline="60")
            async with running_receiver(tmp_path, env=env) as live:
                healed = await wait_for(live, "job_left_open", timeout=30)
            assert Status.SUCCEEDED == healed.status
            assert 1 == done_sim.status_calls("apiframe"), "one pull settles it"


class TestProviderLimits:
    """Polls respect each provider: a concurrency cap, Retry-After, and a circuit."""

    async def test_concurrency_cap_per_provider(self, tmp_path: Path) -> None:
        """Ten overdue jobs against a slow status API: never more than the cap in flight."""
        async with run_simulator(SimConfig(step_delay=0.01, lose=True, status_delay=0.3)) as sim:
            env = _env(sim, deadline="0.1", poll_interval="0.1")
            env["RECEIVER_APIFRAME_POLL_CONCURRENCY"] = "2"
            async with running_receiver(tmp_path, env=env) as live:
                ids = [await submit(live, "apiframe") for _ in range(10)]
                jobs = [await wait_for(live, job_id, timeout=20) for job_id in ids]
            assert {Status.SUCCEEDED} == {job.status for job in jobs}
            assert 2 == sim.status_peak("apiframe")

    async def test_retry_after_is_honoured(self, tmp_path: Path, sim: RunningSimulator) -> None:
        """After a 429 with Retry-After: 2, no pull is made for two seconds, then one succeeds."""
        sim.config.status_error = 429
        sim.config.status_retry_after = 2
        env = _env(sim, deadline="0.1", poll_interval="0.1")
        async with running_receiver(tmp_path, env=env) as live:
            ids = [await submit(live, "apiframe") for _ in range(3)]
            end = time.monotonic() + 5
            while sim.status_calls("apiframe") == 0 and time.monotonic() < end:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # pulls already in flight get their 429 too
            refused = sim.status_calls("apiframe")
            await asyncio.sleep(1.2)
            assert refused == sim.status_calls("apiframe"), "it waited as asked"
            sim.config.status_error = None
            jobs = [await wait_for(live, job_id, timeout=10) for job_id in ids]
        assert {Status.SUCCEEDED} == {job.status for job in jobs}

    async def test_circuit_opens_on_repeated_5xx_and_closes_by_itself(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """Three 503s open the circuit: no calls during the cool-off; then a trial closes it."""
        sim.config.status_error = 503
        env = _env(sim, deadline="0.1", poll_interval="0.05", circuit_failures="3")
        env["RECEIVER_CIRCUIT_COOLDOWN"] = "2"
        async with running_receiver(tmp_path, env=env) as live:
            ids = [await submit(live, "apiframe") for _ in range(6)]
            end = time.monotonic() + 5
            while sim.status_calls("apiframe") < 3 and time.monotonic() < end:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            tripped_at = sim.status_calls("apiframe")
            await asyncio.sleep(1.0)
            assert tripped_at == sim.status_calls("apiframe"), "the circuit is open"
            assert tripped_at < 10
            sim.config.status_error = None
            jobs = [await wait_for(live, job_id, timeout=15) for job_id in ids]
        assert {Status.SUCCEEDED} == {job.status for job in jobs}

    async def test_status_timeouts_count_as_failures(self, tmp_path: Path) -> None:
        """A status API slower than the provider timeout is retried until it answers in time."""
        async with run_simulator(SimConfig(step_delay=0.01, lose=True, status_delay=1.0)) as sim:
            env = _env(sim, deadline="0.1", poll_interval="0.1")
            env["RECEIVER_APIFRAME_TIMEOUT"] = "0.3"
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live, "apiframe")
                end = time.monotonic() + 5
                while sim.status_calls("apiframe") < 2 and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                assert Status.SUCCEEDED != (await job_of(live, job_id)).status
                assert live.runtime.poller.limits["apiframe"].failures >= 1
                sim.config.status_delay = 0
                job = await wait_for(live, job_id, timeout=15)
        assert Status.SUCCEEDED == job.status
