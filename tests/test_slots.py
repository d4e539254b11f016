"""In-flight caps: RECEIVER_<PROVIDER>_MAX_RUNNING jobs at a provider at most, the rest
sent in submission order as slots free, across restarts and across processes.

The receivers run against the provider simulator over HTTP; what the simulator saw (when
each task was created and when it ended) is the proof that the cap held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_process import free_port
from procs import run_cli, start_receiver, wait_healthy

from receiver.dispatch import Registry
from receiver.ingest import Ingest
from receiver.models import Job, Status
from receiver.poller import Poller
from receiver.simulator import RunningSimulator, SimConfig, TaskInfo, run_simulator
from receiver.store.base import NewJob, Store
from receiver.testing import TEST_ADMIN_TOKEN, LiveReceiver, running_receiver

CAP = 2


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    # Each task runs 2 s: long enough that six submissions and a restart happen while the
    # first two are still in flight.
    config = SimConfig(api_keys={"apiframe": "af-key"}, step_delay=1.0)
    async with run_simulator(config) as running:
        yield running


def capped_env(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_POLL_INTERVAL": "0.1",
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": "af-key",
        "RECEIVER_APIFRAME_MAX_RUNNING": str(CAP),
        # A job whose callbacks went to a stopped receiver is pulled 1 s after its news.
        "RECEIVER_APIFRAME_DEADLINE": "1",
        **extra,
    }


def request(n: int) -> dict[str, Any]:
    return {"provider": "apiframe", "input": {"prompt": f"job {n}", "duration": 5}}


def peak_in_flight(tasks: list[TaskInfo]) -> int:
    """The most tasks the simulator had between their creation and their end at once."""
    edges = sorted([(t.created_at, 1) for t in tasks] + [(t.updated_at, -1) for t in tasks])
    peak = running = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: a freed slot, reused
        running += step
        peak = max(peak, running)
    return peak


async def all_ended(
    client: httpx.AsyncClient, ids: list[str], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The jobs once every one has ended; AssertionError with their states after `timeout`."""
    deadline = time.monotonic() + timeout
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = [(await client.get(f"/jobs/{job_id}")).json() for job_id in ids]
        if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs):
            return jobs
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"not all ended: {[(j['id'], j['status'], j['create_state']) for j in jobs]}"
    )


def admin(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}, timeout=30
    )


def admin_of(live: LiveReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.url, headers=live.admin_headers)


class TestCapAcrossARestart:
    """Past the cap a submission is accepted and waits; waiting jobs are sent in order as
    slots free, never more than the cap at once, and the wait survives a restart."""

    async def test_six_jobs_under_a_cap_of_two_across_a_restart(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        env = capped_env(sim)
        async with running_receiver(tmp_path, env=env) as first, admin_of(first) as http:
            answers = [await http.post("/jobs", json=request(n)) for n in range(6)]
            assert [201] * 6 == [answer.status_code for answer in answers]
            jobs = [answer.json() for answer in answers]
        # Stopped with two in flight and four waiting; nothing more was sent.
        assert 2 == sim.create_calls("apiframe")
        assert [None, None, "slot", "slot", "slot", "slot"] == [j["create_state"] for j in jobs]
        assert all(j["status"] == "queued" for j in jobs)
        ids = [job["id"] for job in jobs]
        database = {"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}"}
        code, out, err = await run_cli("job", ids[5], env=database, cwd=tmp_path)
        assert 0 == code, err
        assert "create    waiting for a slot" in out
        async with running_receiver(tmp_path, env=env) as second, admin_of(second) as http:
            ended = await all_ended(http, ids)
        assert ["succeeded"] * 6 == [job["status"] for job in ended]
        tasks = sim.tasks()
        assert 6 == sim.create_calls("apiframe") == len(tasks)
        assert [f"job {n}" for n in range(6)] == [(t.request or {}).get("prompt") for t in tasks]
        assert CAP == peak_in_flight(tasks)
        assert [t.task_id for t in tasks] == [job["task_id"] for job in ended]

    async def test_a_failed_job_frees_its_slot(self, tmp_path: Path, sim: RunningSimulator) -> None:
        sim.config.fail = True
        sim.config.step_delay = 0.3
        async with running_receiver(tmp_path, env=capped_env(sim)) as live, admin_of(live) as http:
            jobs = [(await http.post("/jobs", json=request(n))).json() for n in range(3)]
            assert "slot" == jobs[2]["create_state"]
            ended = await all_ended(http, [job["id"] for job in jobs])
        assert ["failed"] * 3 == [job["status"] for job in ended]
        assert 3 == sim.create_calls("apiframe")
        assert CAP == peak_in_flight(sim.tasks())


def waiting(job_id: str, at: float) -> NewJob:
    return NewJob(
        job=Job(
            id=job_id,
            provider="apiframe",
            task_id=None,
            status=Status.QUEUED,
            created_at=at,
            updated_at=at,
        )
    )


class TestStoreAdmitsUnderTheCap:
    """Admissions racing from two stores (two processes) never pass the cap, and the
    oldest waiting jobs go first."""

    async def test_racing_admissions_admit_the_oldest_two(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        other = make_store()
        await other.open()
        at = time.time()
        try:
            for n in range(6):
                await store.create_job(waiting(f"job_{n}", at + n))
                await store.hold_for_slot(f"job_{n}", {"prompt": f"job {n}"}, at + 3600)
            admitted = await asyncio.gather(
                *(
                    (store if n % 2 else other).admit_creates("apiframe", CAP, at=at, lease=60)
                    for n in range(8)
                )
            )
            again = await other.admit_creates("apiframe", CAP, at=at, lease=60)
        finally:
            await other.close()
        assert ["job_0", "job_1"] == sorted(job for batch in admitted for job in batch)
        assert [] == again
        fields = await store.begin_create_retry(
            "job_0", token_hash="t", secret_hash=None, next_poll_at=at + 3600
        )
        assert {"prompt": "job 0"} == fields
        still = await store.get_job("job_2")
        assert still is not None and "slot" == still.create_state

    async def test_nothing_waiting_admits_nothing(self, store: Store) -> None:
        assert [] == await store.admit_creates("apiframe", CAP, at=time.time(), lease=60)


class TestNeverSent:
    """A job still waiting for a slot at its give-up age fails, saying it was never sent."""

    async def test_the_poller_fails_it_as_no_slot(self, store: Store) -> None:
        poller = Poller(store, Ingest(store, Registry()), {}, give_up_for=lambda provider: 1.0)
        at = time.time() - 5
        await store.create_job(waiting("job_0", at))
        await store.hold_for_slot("job_0", {"prompt": "job 0"}, at + 1.0)
        assert 1 == await poller.run_once()
        job = await store.get_job("job_0")
        assert job is not None
        assert (Status.FAILED, "no_slot") == (job.status, job.error_code)
        assert "never sent to apiframe" in (job.error or "")
        assert [] == await store.admit_creates("apiframe", CAP, at=time.time(), lease=60)


class TestCapAcrossProcesses:
    """Two `receiver serve` processes on one PostgreSQL database share the cap."""

    async def test_two_processes_never_pass_a_cap_of_two(
        self, tmp_path: Path, pg_url: str, sim: RunningSimulator
    ) -> None:
        sim.config.step_delay = 0.5
        env = capped_env(sim, RECEIVER_DATABASE_URL=pg_url, RECEIVER_HANDLERS="")
        urls, processes = [], []
        try:
            for name in ("a", "b"):
                home = tmp_path / name
                home.mkdir()
                port = free_port()
                processes.append(start_receiver(home, port, env))
                urls.append(f"http://127.0.0.1:{port}")
            for url, process in zip(urls, processes, strict=True):
                await wait_healthy(url, process)
            ids = []
            async with admin(urls[0]) as one, admin(urls[1]) as two:
                for n in range(6):
                    answer = await (one if n % 2 == 0 else two).post("/jobs", json=request(n))
                    assert 201 == answer.status_code, answer.text
                    ids.append(answer.json()["id"])
                ended = await all_ended(one, ids)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=20)
        assert ["succeeded"] * 6 == [job["status"] for job in ended]
        tasks = sim.tasks()
        assert 6 == sim.create_calls("apiframe") == len(tasks)
        assert {f"job {n}" for n in range(6)} == {(t.request or {}).get("prompt") for t in tasks}
        assert CAP == peak_in_flight(tasks)
