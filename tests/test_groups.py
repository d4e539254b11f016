"""Provider groups: one job, any reseller. A group's common fields are mapped by each
member's adapter, and the job moves to the next member only when one certainly did not
take it (a definite refusal, a field it cannot express, an open circuit), never after an
uncertain create.

A real receiver runs against the provider simulator over HTTP; the simulator's tasks say
which provider was called and with what.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import run_cli

from receiver.config import load_settings
from receiver.errors import ConfigError, ProviderError
from receiver.simulator import RunningSimulator, SimConfig, TaskInfo, run_simulator
from receiver.testing import LiveReceiver, running_receiver

KEYS = {"apiframe": "af-key", "rixapi": "rx-key", "aivideoapi": "av-key"}
GROUPS = "runway=apiframe,rixapi,aivideoapi;rix=rixapi;vid=aivideoapi;vid_first=aivideoapi,rixapi"
# What the receiver adds to every create: not the user's fields.
CALLBACK_FIELDS = ("webhook_url", "callback_url")


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys=dict(KEYS), step_delay=0.2)) as running:
        yield running


def group_env(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    env = {"RECEIVER_POLL_INTERVAL": "0.1", "RECEIVER_GROUPS": GROUPS}
    for name, key in KEYS.items():
        env[f"RECEIVER_{name.upper()}_BASE_URL"] = sim.base_url(name)
        env[f"RECEIVER_{name.upper()}_API_KEY"] = key
    return {**env, **extra}


@pytest.fixture
async def receiver_env() -> dict[str, str]:
    """Settings a test adds to the receiver's (a wrong key, a short timeout)."""
    return {}


@pytest.fixture
async def live(
    tmp_path: Path, sim: RunningSimulator, receiver_env: dict[str, str]
) -> AsyncIterator[LiveReceiver]:
    async with running_receiver(tmp_path, env=group_env(sim, **receiver_env)) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as http:
        yield http


async def submit(client: httpx.AsyncClient, group: str, **fields: Any) -> dict[str, Any]:
    answer = await client.post("/jobs", json={"provider": group, "input": fields})
    assert 201 == answer.status_code, answer.text
    job: dict[str, Any] = answer.json()
    return job


async def ended(client: httpx.AsyncClient, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never ended: {job}")


def sent(task: TaskInfo) -> dict[str, Any]:
    """The fields the simulator received, without the callback fields the receiver adds."""
    return {k: v for k, v in (task.request or {}).items() if k not in CALLBACK_FIELDS}


def providers_called(sim: RunningSimulator) -> list[str]:
    return [task.provider for task in sim.tasks()]


class TestFailsOverPastARefusal:
    """A member that refuses the create for certain passes the job to the next one."""

    @pytest.mark.parametrize("receiver_env", [{"RECEIVER_APIFRAME_API_KEY": "wrong"}])
    async def test_a_refusing_member_passes_the_job_on(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        job = await submit(client, "runway", prompt="a red fox", duration=5)
        done = await ended(client, job["id"])
        (task,) = sim.tasks()
        assert ("succeeded", "rixapi", "runway") == (
            done["status"],
            done["provider"],
            done["provider_group"],
        )
        assert (task.provider, task.task_id) == ("rixapi", done["task_id"])

    @pytest.mark.parametrize(
        "receiver_env",
        [{"RECEIVER_APIFRAME_API_KEY": "wrong", "RECEIVER_RIXAPI_API_KEY": "wrong"}],
    )
    async def test_two_refusals_reach_the_third_member(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        job = await submit(client, "runway", prompt="a red fox")
        done = await ended(client, job["id"])
        assert ("succeeded", "aivideoapi") == (done["status"], done["provider"])
        assert ["aivideoapi"] == providers_called(sim)

    @pytest.mark.parametrize(
        "receiver_env",
        [{f"RECEIVER_{name.upper()}_API_KEY": "wrong" for name in KEYS}],
    )
    async def test_when_every_member_refuses_the_job_fails_with_the_last_refusal(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        job = await submit(client, "runway", prompt="a red fox")
        assert ("failed", "aivideoapi", "401") == (
            job["status"],
            job["provider"],
            job["error_code"],
        )
        assert [] == providers_called(sim)

    async def test_a_ratio_a_member_cannot_express_moves_on_without_calling_it(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        job = await submit(client, "vid_first", prompt="a red fox", ratio="1:1")
        assert "rixapi" == job["provider"]
        assert ["rixapi"] == providers_called(sim)
        assert 0 == sim.create_calls("aivideoapi")

    async def test_an_open_circuit_is_passed_by(
        self, live: LiveReceiver, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        limits = live.runtime.poller.limits["apiframe"]
        for _ in range(live.runtime.settings.circuit_failures):  # its status API kept failing
            limits.failed(ProviderError("apiframe answered 502", status_code=502), time.time())
        job = await submit(client, "runway", prompt="a red fox")
        assert "rixapi" == job["provider"]
        assert 0 == sim.create_calls("apiframe")

    @pytest.mark.parametrize("receiver_env", [{"RECEIVER_APIFRAME_MAX_RUNNING": "1"}])
    async def test_a_member_at_its_cap_keeps_the_job_waiting_for_a_slot(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        first = await submit(client, "runway", prompt="one")
        second = await submit(client, "runway", prompt="two")
        assert ("apiframe", "slot") == (second["provider"], second["create_state"])
        done = [await ended(client, job["id"]) for job in (first, second)]
        assert [("succeeded", "apiframe")] * 2 == [(j["status"], j["provider"]) for j in done]
        assert ["apiframe", "apiframe"] == providers_called(sim)


class TestNeverFailsOverAnUncertainCreate:
    """A create with no clear answer keeps the job with that member: it may have the task."""

    async def test_a_502_keeps_the_job_uncertain_at_the_first_member(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        sim.config.create_error = 502
        sim.config.create_error_times = 1
        job = await submit(client, "runway", prompt="a red fox")
        await asyncio.sleep(0.5)
        again = (await client.get(f"/jobs/{job['id']}")).json()
        assert ("queued", "apiframe", "uncertain") == (
            again["status"],
            again["provider"],
            again["create_state"],
        )
        assert (1, 0, 0) == tuple(sim.create_calls(name) for name in KEYS)

    @pytest.mark.parametrize("receiver_env", [{"RECEIVER_APIFRAME_TIMEOUT": "0.3"}])
    async def test_a_timeout_after_the_task_was_created_is_adopted_there(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        # apiframe creates the task but answers after the receiver stopped waiting; its
        # callbacks then reveal the task.
        sim.config.create_delay = 1.0
        sim.config.step_delay = 0.6
        job = await submit(client, "runway", prompt="a red fox")
        assert ("apiframe", "uncertain") == (job["provider"], job["create_state"])
        done = await ended(client, job["id"])
        (task,) = sim.tasks()
        assert ("succeeded", "apiframe", task.task_id) == (
            done["status"],
            done["provider"],
            done["task_id"],
        )
        assert (1, 0, 0) == tuple(sim.create_calls(name) for name in KEYS)


IMAGE = "https://img.example/fox.png"


class TestCommonFieldsAreMappedPerProvider:
    """Each member receives the common fields in its own API's names."""

    @pytest.mark.parametrize(
        ("group", "fields", "expected"),
        [
            (
                "runway",
                {"prompt": "fox", "duration": 10, "ratio": "9:16", "model": "gen3"},
                {
                    "prompt": "fox",
                    "generation_type": "text2video",
                    "duration": 10,
                    "aspect_ratio": "9:16",
                    "model": "gen3",
                },
            ),
            (
                "runway",
                {"prompt": "fox", "image_url": IMAGE, "ratio": "9:16"},
                {"prompt": "fox", "generation_type": "image2video", "image_url": IMAGE},
            ),
            (
                "rix",
                {"prompt": "fox", "duration": 10, "ratio": "9:16", "model": "gen3"},
                {"prompt": "fox", "ratio": "9:16", "model": "gen3", "options": {"seconds": 10}},
            ),
            (
                "rix",
                {"prompt": "fox", "image_url": IMAGE},
                {"prompt": "fox", "image": IMAGE},
            ),
            (
                "vid",
                {"prompt": "fox", "duration": 10, "ratio": "9:16", "model": "gen3"},
                {
                    "text_prompt": "fox",
                    "time": 10,
                    "width": 768,
                    "height": 1280,
                    "model": "gen3",
                },
            ),
            (
                "vid",
                {"prompt": "fox", "image_url": IMAGE, "ratio": "16:9"},
                {"text_prompt": "fox", "image_prompt": IMAGE, "width": 1280, "height": 768},
            ),
        ],
    )
    async def test_what_the_provider_received(
        self,
        client: httpx.AsyncClient,
        sim: RunningSimulator,
        group: str,
        fields: dict[str, Any],
        expected: dict[str, Any],
    ) -> None:
        job = await submit(client, group, **fields)
        done = await ended(client, job["id"])
        (task,) = sim.tasks()
        assert expected == sent(task)
        assert ("succeeded", group) == (done["status"], done["provider_group"])

    async def test_a_field_no_group_knows_is_400_and_makes_no_job(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        answer = await client.post(
            "/jobs", json={"provider": "runway", "input": {"prompt": "fox", "aspect_ratio": "1"}}
        )
        assert 400 == answer.status_code
        assert "no field 'aspect_ratio'" in answer.text
        assert [] == (await client.get("/jobs")).json()["items"]


class TestSubmitCommand:
    """`receiver submit GROUP FIELD=VALUE` submits to the group from the command line."""

    async def test_submit_to_a_group(self, tmp_path: Path, sim: RunningSimulator) -> None:
        env = {
            **group_env(sim),
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_APIFRAME_API_KEY": "wrong",
        }
        code, out, err = await run_cli(
            "submit", "runway", "prompt=a red fox", "duration=5", "--json", env=env, cwd=tmp_path
        )
        assert 0 == code, err
        assert '"provider": "rixapi"' in out or '"provider":"rixapi"' in out
        (task,) = sim.tasks()
        assert {"prompt": "a red fox", "options": {"seconds": 5}} == sent(task)

    async def test_a_misspelt_field_exits_2(self, tmp_path: Path, sim: RunningSimulator) -> None:
        env = {**group_env(sim), "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
        code, _, err = await run_cli("submit", "runway", "promt=fox", env=env, cwd=tmp_path)
        assert 2 == code
        assert "did you mean prompt" in err
        assert [] == sim.tasks()


class TestGroupSettings:
    """A group is checked at start: a fresh name and members that can take its fields."""

    def test_the_toml_table_and_the_variable(self, tmp_path: Path) -> None:
        path = tmp_path / "receiver.toml"
        path.write_text('[groups]\nrunway = ["apiframe", "rixapi"]\n')
        assert {"runway": ["apiframe", "rixapi"]} == load_settings({}, path).groups
        env = {"RECEIVER_GROUPS": "runway=rixapi, apiframe; other=aivideoapi"}
        expected = {"runway": ["rixapi", "apiframe"], "other": ["aivideoapi"]}
        assert expected == load_settings(env).groups

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("apiframe=rixapi", "cannot take a provider's name"),
            ("runway=artvisum", "'artvisum' cannot be a member"),
            ("runway=nobody", "'nobody' cannot be a member"),
            ("runway=rixapi,rixapi", "named twice"),
            ("runway=", "at least one provider"),
        ],
    )
    def test_a_bad_group_stops_the_start(self, value: str, message: str, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=message):
            load_settings({"RECEIVER_GROUPS": value})
