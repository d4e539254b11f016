"""Submit -> provider -> callback or poll -> handler, through the provider simulator over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.dispatch import Registry
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.testing import LiveReceiver, running_receiver

API_KEYS = {
    "apiframe": "af-key",
    "rixapi": "rix-key",
    "aivideoapi": "aiv-key",
    "artvisum": "art-key",
    "runway_ai": "rw-key",
}

# One realistic create input per provider, with the fields of its document.
INPUTS: dict[str, dict[str, Any]] = {
    "apiframe": {"prompt": "A colossal mech suit", "generation_type": "text2video", "duration": 5},
    "rixapi": {"prompt": "cat", "model": "gen3", "ratio": "16:9", "options": {"seconds": 10}},
    "aivideoapi": {
        "text_prompt": "Space travel",
        "video_prompt": "https://files.aivideoapi.com/example/ship.mp4",
        "structure_transformation": 0.5,
    },
    "artvisum": {"prompt": "masterpiece, cinematic, man smoking", "negative_prompt": "blur"},
    "runway_ai": {"endpoint": "generate-video", "prompt": "a fox", "duration": 5},
}


class Handled:
    """Every handler call, as (job id, status, progress, result url)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float | None, str | None]] = []

    def of(self, job_id: str) -> list[tuple[str, float | None]]:
        return [(status, progress) for jid, status, progress, _ in self.calls if jid == job_id]


@pytest.fixture
def handled() -> Handled:
    return Handled()


@pytest.fixture
def handlers(handled: Handled) -> Registry:
    registry = Registry()

    @registry.on("*")
    async def everything(event: Any, job: Any) -> None:
        handled.calls.append((job.id, event.status.value, event.progress, event.result_url))

    return registry


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys=dict(API_KEYS), step_delay=0.05)) as running:
        yield running


@pytest.fixture
async def live(
    tmp_path: Path, sim: RunningSimulator, handlers: Registry
) -> AsyncIterator[LiveReceiver]:
    env = {"RECEIVER_POLL_INTERVAL": "0.1"}
    for provider, key in API_KEYS.items():
        env[f"RECEIVER_{provider.upper()}_BASE_URL"] = sim.base_url(provider)
        env[f"RECEIVER_{provider.upper()}_API_KEY"] = key
    async with running_receiver(tmp_path, handlers=handlers, env=env) as receiver:
        yield receiver


async def submit(live: LiveReceiver, provider: str, **extra: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        answer = await client.post(
            "/jobs",
            json={
                "provider": provider,
                "input": INPUTS[provider],
                "metadata": {"order": 7},
                **extra,
            },
        )
    assert 201 == answer.status_code, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def wait_until_final(live: LiveReceiver, job_id: str, timeout: float = 10) -> dict[str, Any]:
    """The job once it is terminal and its handlers have all run."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        while time.monotonic() < deadline:
            job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                deliveries = (await client.get(f"/jobs/{job_id}/deliveries")).json()["items"]
                if all(d["state"] in ("done", "dead") for d in deliveries):
                    return job
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def events_of(live: LiveReceiver, job_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        items: list[dict[str, Any]] = (await client.get(f"/jobs/{job_id}/events")).json()["items"]
        return items


class TestEveryProvider:
    """A job submitted to each provider ends succeeded and fires the handlers once per change."""

    @pytest.mark.parametrize("provider", sorted(API_KEYS))
    async def test_submit_to_success(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled, provider: str
    ) -> None:
        """The simulator's callbacks, nudges or status answers bring the job to succeeded."""
        created = await submit(live, provider)
        job = await wait_until_final(live, created["id"])
        assert "succeeded" == job["status"]
        assert 1.0 == job["progress"]
        assert job["result_url"].startswith(sim.url)
        assert {"order": 7} == job["metadata"]
        calls = handled.of(created["id"])
        assert ("succeeded", 1.0) == calls[-1]
        assert 1 == sum(status == "succeeded" for status, _ in calls)
        progress = [p for _, p in calls if p is not None]
        assert sorted(progress) == progress, "progress only moves forward"
        if provider != "runway_ai":
            [task] = [t for t in sim.tasks() if t.provider == provider]
            assert task.task_id == job["task_id"]

    async def test_apiframe_posts_progress_with_the_job_secret(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled
    ) -> None:
        """apiframe's "40" progress post and its result post both pass the secret check."""
        created = await submit(live, "apiframe")
        await wait_until_final(live, created["id"])
        await sim.wait_idle()
        assert [("running", 0.4), ("succeeded", 1.0)] == handled.of(created["id"])
        [task] = sim.tasks()
        assert [200, 200] == [c.status_code for c in task.callbacks]

    async def test_aivideoapi_nudge_is_turned_into_a_status_pull(
        self, live: LiveReceiver, sim: RunningSimulator
    ) -> None:
        """The one bare GET makes the receiver ask /status, whose answer is the event."""
        created = await submit(live, "aivideoapi")
        await wait_until_final(live, created["id"])
        [task] = sim.tasks()
        assert [("GET", 202)] == [(c.method, c.status_code) for c in task.callbacks]
        assert ["poll"] == [e["source"] for e in await events_of(live, created["id"])]


class TestProviderMisbehaviour:
    """Failures, refusals, duplicates and late posts from real provider shapes."""

    @pytest.mark.parametrize("provider", ["apiframe", "rixapi", "aivideoapi", "artvisum"])
    async def test_failed_generation_fails_the_job_with_the_provider_error(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled, provider: str
    ) -> None:
        """A provider reporting failure gives a failed job with an error, and `failed` fires."""
        sim.config.fail = True
        created = await submit(live, provider)
        job = await wait_until_final(live, created["id"])
        assert "failed" == job["status"]
        assert job["error"]
        assert "failed" == handled.of(created["id"])[-1][0]

    @pytest.mark.parametrize("provider", sorted(API_KEYS))
    async def test_refused_create_gives_a_failed_job(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled, provider: str
    ) -> None:
        """A create call answered with an error leaves a failed job carrying that error."""
        sim.config.create_error = 402
        created = await submit(live, provider)
        assert ("failed", "create_failed", "402") == (
            created["status"],
            created["raw_status"],
            created["error_code"],
        )
        assert "402" in created["error"]
        await wait_until_final(live, created["id"])
        assert [("failed", None)] == handled.of(created["id"])

    async def test_input_the_adapter_cannot_use_gives_a_failed_job(
        self, live: LiveReceiver, handled: Handled
    ) -> None:
        """Fields of the wrong type fail the job with a reason instead of crashing the request."""
        async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
            answer = await client.post(
                "/jobs", json={"provider": "aivideoapi", "input": {"endpoint": ["text"]}}
            )
        assert 201 == answer.status_code
        created = answer.json()
        assert ("failed", "create_failed") == (created["status"], created["raw_status"])
        await wait_until_final(live, created["id"])
        assert [("failed", None)] == handled.of(created["id"])

    async def test_file_fields_are_refused_over_http(
        self, live: LiveReceiver, sim: RunningSimulator
    ) -> None:
        """A local file path in POST /jobs would let a caller upload any file: it is a 400."""
        async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
            answer = await client.post(
                "/jobs", json={"provider": "artvisum", "input": {"image": "/etc/passwd"}}
            )
        assert 400 == answer.status_code
        assert "CLI" in answer.text
        assert [] == sim.tasks()
        assert [] == (await live.runtime.store.list_jobs()).items

    async def test_wrong_api_key_gives_a_failed_job(
        self, tmp_path: Path, sim: RunningSimulator, handlers: Registry
    ) -> None:
        """The provider's 401 for a bad key is the job's error, not a crash."""
        env = {
            "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
            "RECEIVER_APIFRAME_API_KEY": "wrong",
        }
        async with running_receiver(tmp_path, handlers=handlers, env=env) as live:
            created = await submit(live, "apiframe")
        assert ("failed", "401") == (created["status"], created["error_code"])

    @pytest.mark.parametrize("provider", ["apiframe", "rixapi"])
    async def test_duplicates_and_late_posts_fire_nothing_new(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled, provider: str
    ) -> None:
        """Every callback sent twice plus a progress post after the result: one call per change."""
        sim.config.duplicate = True
        sim.config.late = True
        created = await submit(live, provider)
        await wait_until_final(live, created["id"])
        await sim.wait_idle()
        await live.runtime.dispatcher.drain(timeout=5)
        calls = handled.of(created["id"])
        assert len(calls) == len(set(calls))
        assert "succeeded" == calls[-1][0]
        events = await events_of(live, created["id"])
        [task] = sim.tasks()
        requests = await live.runtime.store.list_requests(created["id"])
        assert len(task.callbacks) == len(requests), "every callback is stored"
        # rixapi's final post (sent twice here) is unauthenticated: it is kept as a request
        # and confirmed by a pull, whose answer is the event.
        from_callbacks = sum(1 for e in events if e["source"] == "callback")
        unconfirmed_finals = 2 if provider == "rixapi" else 0
        assert len(task.callbacks) == from_callbacks + unconfirmed_finals
        assert ["running", "succeeded"] == [
            e["status"] for e in events if e["disposition"] == "applied"
        ]
        # The repeat of the progress post after the result is the same (status, progress)
        # as the first one, so it is marked a duplicate rather than late: either way, kept.
        assert {"duplicate"} <= {e["disposition"] for e in events if e["disposition"] != "applied"}
        assert "applied" != events[-1]["disposition"]
        job = await wait_until_final(live, created["id"])
        assert "succeeded" == job["status"]

    async def test_rixapi_wrapped_callbacks(
        self, live: LiveReceiver, sim: RunningSimulator, handled: Handled
    ) -> None:
        """rixapi bodies wrapped in {code, msg, data} are read like bare ones."""
        sim.config.wrapped = True
        created = await submit(live, "rixapi")
        job = await wait_until_final(live, created["id"])
        assert "succeeded" == job["status"]
        assert "succeeded" == handled.of(created["id"])[-1][0]
