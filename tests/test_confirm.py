"""An unauthenticated provider's final callback is confirmed with its status API.

rixapi posts without any credential, so the job's URL token is all that vouches for a
body. A leaked token must not be able to end a job, nor give it a task id, result or
preview of its choosing, also while the create call has not answered yet.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from downstream import downstream

from receiver.dispatch import Registry
from receiver.models import Job, Status
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.simulator.core import TaskInfo
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


async def first_task(sim: RunningSimulator, timeout: float = 5) -> TaskInfo:
    """The simulator's first task, as soon as its create call has reached the simulator."""
    end = time.monotonic() + timeout
    while not sim.tasks():
        assert time.monotonic() < end, "no create call reached the simulator"
        await asyncio.sleep(0.01)
    return sim.tasks()[0]


async def post(url: str | None, body: dict[str, Any]) -> httpx.Response:
    assert url is not None
    async with httpx.AsyncClient() as client:
        return await client.post(url, json=body)


class TestConfirmBeforeTheTaskId:
    """A final state posted before the create call answers waits for the task id, then a pull."""

    async def test_a_forged_success_before_the_create_answer_is_not_believed(
        self, tmp_path: Path, store_url: str
    ) -> None:
        """A success posted while the create call is in flight ends nothing; the pull decides."""
        calls: list[tuple[str, str]] = []
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            calls.append((event.status.value, event.result_url or ""))

        config = SimConfig(step_delay=60, create_delay=1.0)
        async with (
            run_simulator(config) as sim,
            running_receiver(
                tmp_path, env=_env(sim, RECEIVER_DATABASE_URL=store_url), handlers=registry
            ) as live,
        ):
            submitting = asyncio.ensure_future(submit(live))
            task = await first_task(sim)
            forged = {"task_id": task.task_id, "status": "3", "video_url": FORGED}
            answer = await post(task.callback_url, forged)
            before = await live.runtime.store.list_jobs(provider="rixapi")
            job_id = await submitting
            end = time.monotonic() + 5
            while sim.status_calls("rixapi") == 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await live.runtime.dispatcher.drain(timeout=5)
            job = await live.runtime.store.get_job(job_id)
        assert 202 == answer.status_code
        assert {"ok": True, "confirming": True} == answer.json()
        assert [None] == [j.task_id for j in before.items], "the create call had not answered"
        assert sim.status_calls("rixapi") >= 1, "the status API was asked once the id came"
        assert job is not None
        assert (Status.QUEUED, None) == (job.status, job.result_url)
        assert [] == succeeded_calls(calls)

    async def test_a_task_id_from_an_unconfirmed_post_is_never_pulled(self, tmp_path: Path) -> None:
        """Posts naming another task (one the poster owns, finished) cannot make the
        confirming pull ask about it: only the create answer gives the job its task id."""
        async with (
            run_simulator(SimConfig(step_delay=0.01)) as sim,
            running_receiver(tmp_path, env=_env(sim)) as live,
        ):
            async with httpx.AsyncClient(headers={"Authorization": "Bearer key"}) as client:
                own = await client.post(
                    sim.base_url("rixapi") + "/runway/pro/generate",
                    json={"prompt": "x", "callback_url": "http://127.0.0.1:9/nowhere"},
                )
            await sim.simulator.wait_idle()
            [other] = sim.tasks()
            assert own.json()["data"]["task_id"] == other.task_id
            sim.simulator.config.step_delay = 60
            sim.simulator.config.create_delay = 1.0
            submitting = asyncio.ensure_future(submit(live))
            while len(sim.tasks()) < 2:
                await asyncio.sleep(0.01)
            callback_url = sim.tasks()[1].callback_url
            running = {"task_id": other.task_id, "status": "1", "progress": "50"}
            final = {"task_id": other.task_id, "status": "3", "video_url": other.result_url or ""}
            answers = [await post(callback_url, running), await post(callback_url, final)]
            job_id = await submitting
            end = time.monotonic() + 5
            while sim.status_calls("rixapi") == 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            job = await live.runtime.store.get_job(job_id)
        assert [200, 202] == [answer.status_code for answer in answers]
        assert job is not None
        assert sim.tasks()[1].task_id == job.task_id
        assert (Status.RUNNING, None) == (job.status, job.result_url)

    async def test_the_providers_early_final_callback_is_confirmed_by_a_pull(
        self, tmp_path: Path, store_url: str
    ) -> None:
        """The provider's own final callback, sent before its create answer, ends the job
        through the pull that follows the task id, and the handlers run once."""
        calls: list[tuple[str, str]] = []
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            calls.append((event.status.value, event.result_url or ""))

        config = SimConfig(step_delay=0.05, create_delay=1.0)
        async with run_simulator(config) as sim:
            env = _env(sim, RECEIVER_DATABASE_URL=store_url)
            async with running_receiver(tmp_path, env=env, handlers=registry) as live:
                job_id = await submit(live)
                job = await wait_final(live, job_id)
                await live.runtime.dispatcher.drain(timeout=5)
                events = await live.runtime.store.list_events(job_id)
            [task] = sim.tasks()
        assert [200, 202] == [callback.status_code for callback in task.callbacks]
        assert Status.SUCCEEDED == job.status
        assert task.result_url == job.result_url
        assert "poll" == next(e for e in events if e.status is Status.SUCCEEDED).source
        assert [task.result_url] == succeeded_calls(calls)


PLANTED_VIDEO = "/planted.mp4"
PLANTED_POSTER = "/planted.jpg"


def planted_running(task_id: str, host: str) -> dict[str, str]:
    """A "running" post carrying URLs of the poster's choosing, as a leaked token allows."""
    return {
        "task_id": task_id,
        "status": "1",
        "progress": "50",
        "video_url": host + PLANTED_VIDEO,
        "poster": host + PLANTED_POSTER,
        "last_frame": host + PLANTED_POSTER,
    }


class TestUnconfirmedFields:
    """A job's result and preview URLs come from the status API, never from an unconfirmed post."""

    async def test_a_planted_preview_is_never_downloaded(self, tmp_path: Path) -> None:
        """The download handler fetches only the confirmed result: a preview posted with the
        token alone is neither on the job nor fetched, though the confirmed end has none."""
        config = SimConfig(step_delay=1.0, no_preview=True)
        async with downstream() as evil, run_simulator(config) as sim:
            # Loopback allowed: the simulator and the planted host both live there, so only
            # the confirmation keeps the planted preview out.
            env = _env(
                sim,
                RECEIVER_DOWNLOAD_DIR=str(tmp_path / "files"),
                RECEIVER_FETCH_ALLOW_NETWORKS="127.0.0.0/8",
            )
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live)
                [task] = sim.tasks()
                planted = await post(task.callback_url, planted_running(task.task_id, evil.url))
                running = await live.runtime.store.get_job(job_id)
                job = await wait_final(live, job_id)
                await live.runtime.dispatcher.drain(timeout=5)
                job = await live.runtime.store.get_job(job_id)
                async with httpx.AsyncClient(base_url=live.url) as client:
                    shown = await client.get(f"/jobs/{job_id}", headers=live.admin_headers)
        assert 200 == planted.status_code
        assert running is not None
        assert (None, None) == (running.result_url, running.preview_url)
        assert job is not None
        assert Status.SUCCEEDED == job.status
        assert (task.result_url, None) == (job.result_url, job.preview_url)
        assert ["result"] == sorted(job.files)
        assert task.result_url == job.files["result"].url
        assert [] == evil.seen, "nothing was fetched from the planted host"
        assert evil.url not in shown.text

    async def test_a_confirmed_failure_leaves_no_planted_result(self, tmp_path: Path) -> None:
        """After a planted video URL, the confirmed failure reaches the command handler
        with no result URL and the provider's own error."""
        record = tmp_path / "argv.json"
        script = tmp_path / "record.py"
        script.write_text("import json, sys\njson.dump(sys.argv[2:], open(sys.argv[1], 'w'))\n")
        command = shlex.join([sys.executable, str(script), str(record)])
        command += " {status} {result_url} {error}"
        config = SimConfig(step_delay=1.0, fail=True)
        async with run_simulator(config) as sim:
            env = _env(sim, RECEIVER_COMMAND=command)
            async with running_receiver(tmp_path, env=env) as live:
                job_id = await submit(live)
                [task] = sim.tasks()
                body = planted_running(task.task_id, "https://attacker.example")
                planted = await post(task.callback_url, body | {"msg": "planted error"})
                job = await wait_final(live, job_id)
                await live.runtime.dispatcher.drain(timeout=5)
        assert 200 == planted.status_code
        assert (Status.FAILED, None) == (job.status, job.result_url)
        assert job.error is not None and "planted" not in job.error
        assert ["failed", "", job.error] == json.loads(record.read_text())
