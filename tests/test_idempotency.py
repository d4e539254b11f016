"""Never pay twice: idempotent submissions, uncertain creates, and creates the provider defers.

Every test runs a real receiver against the provider simulator over HTTP and counts the
create calls the simulator received: a create call is a paid generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import run_cli

from receiver.dispatch import Registry
from receiver.models import Job, Status
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.store.base import NewJob, Store
from receiver.testing import TEST_ADMIN_TOKEN, LiveReceiver, running_receiver

PROMPT = {"prompt": "A colossal mech suit", "generation_type": "text2video", "duration": 5}
REQUEST = {"provider": "apiframe", "input": PROMPT, "metadata": {"order": 7}}


class Handled:
    """Every handler call, as (job id, status)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def of(self, job_id: str) -> list[str]:
        return [status for jid, status in self.calls if jid == job_id]


@pytest.fixture
def handled() -> Handled:
    return Handled()


@pytest.fixture
def handlers(handled: Handled) -> Registry:
    registry = Registry()

    @registry.on("*")
    async def everything(event: Any, job: Any) -> None:
        handled.calls.append((job.id, event.status.value))

    return registry


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys={"apiframe": "af-key"})) as running:
        yield running


def receiver_env(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_POLL_INTERVAL": "0.1",
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": "af-key",
        **extra,
    }


@pytest.fixture
async def live(
    tmp_path: Path, sim: RunningSimulator, handlers: Registry
) -> AsyncIterator[LiveReceiver]:
    async with running_receiver(tmp_path, handlers=handlers, env=receiver_env(sim)) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as http:
        yield http


def admin_client(live: LiveReceiver) -> httpx.AsyncClient:
    """A client of `live`'s admin API."""
    return httpx.AsyncClient(base_url=live.url, headers=live.admin_headers)


async def post_job(
    client: httpx.AsyncClient, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/jobs", json=body, headers=headers)


async def job_when(
    client: httpx.AsyncClient, job_id: str, done: Any, timeout: float = 10.0
) -> dict[str, Any]:
    """The job once `done(job)` holds; AssertionError with its last state after `timeout`."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if done(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job}")


def keyed(job_id: str, key: str | None) -> NewJob:
    at = time.time()
    job = Job(
        id=job_id,
        provider="apiframe",
        task_id=None,
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
        idempotency_key=key,
    )
    return NewJob(job=job, request_hash=f"hash-of-{job_id}")


class TestStoreKeepsOneJobPerKey:
    """The store makes one job per idempotency key, even for inserts racing from two stores."""

    async def test_racing_inserts_from_two_stores_make_one_job(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        other = make_store()
        await other.open()
        try:
            made = await asyncio.gather(
                *(
                    (store if n % 2 else other).create_job(keyed(f"job_{n}", "the-key"))
                    for n in range(6)
                )
            )
        finally:
            await other.close()
        assert 1 == sum(made)
        found = await store.job_by_idempotency_key("the-key")
        assert found is not None
        winner = f"job_{made.index(True)}"
        assert (winner, f"hash-of-{winner}") == (found.job.id, found.request_hash)
        assert "the-key" == found.job.idempotency_key
        assert 1 == len((await store.list_jobs()).items)

    async def test_jobs_without_a_key_never_collide(self, store: Store) -> None:
        assert [True, True] == [await store.create_job(keyed(f"job_{n}", None)) for n in (1, 2)]
        assert None is await store.job_by_idempotency_key("")


class TestStoreKeepsDeferredCreates:
    """A deferred create keeps its fields until one process takes it for sending, once."""

    async def test_one_retry_takes_the_fields_and_new_credentials(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        assert await store.create_job(keyed("job_1", None))
        fields = {"prompt": "a fox", "api_token": "kept-as-given"}
        await store.defer_create("job_1", fields, at=time.time() - 1)
        waiting = await store.get_job("job_1")
        assert waiting is not None and "waiting" == waiting.create_state
        assert ["job_1"] == [
            job.id for job in await store.claim_polls(limit=5, lease=60, at=time.time())
        ]
        other = make_store()
        await other.open()
        try:
            taken = await asyncio.gather(
                *(
                    backend.begin_create_retry(
                        "job_1",
                        token_hash=f"tok-{n}",
                        secret_hash=None,
                        next_poll_at=time.time() + 99,
                    )
                    for n, backend in enumerate((store, other, store))
                )
            )
        finally:
            await other.close()
        assert [fields] == [found for found in taken if found is not None]
        winner = next(n for n, found in enumerate(taken) if found is not None)
        match = await store.job_by_token(f"tok-{winner}")
        assert match is not None and "uncertain" == match.job.create_state


class TestIdempotentSubmission:
    """One Idempotency-Key makes at most one job and one create call, whoever sends it when."""

    async def test_concurrent_posts_with_one_key_make_one_job_and_one_create(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        answers = await asyncio.gather(*(post_job(client, REQUEST, "order-7") for _ in range(2)))
        assert [200, 201] == sorted(answer.status_code for answer in answers), answers
        assert 1 == len({answer.json()["id"] for answer in answers})
        replayed = next(answer for answer in answers if answer.status_code == 200)
        assert "true" == replayed.headers.get("idempotent-replayed")
        assert 1 == sim.create_calls("apiframe")
        assert 1 == len(sim.tasks())
        listed = (await client.get("/jobs")).json()["items"]
        assert [answers[0].json()["id"]] == [job["id"] for job in listed]

    async def test_a_retry_after_the_job_ended_answers_it_without_a_create(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        first = await post_job(client, REQUEST, "order-8")
        assert 201 == first.status_code
        assert "idempotent-replayed" not in first.headers
        await job_when(client, first.json()["id"], lambda job: job["status"] == "succeeded")
        again = await post_job(client, REQUEST, "order-8")
        assert (200, first.json()["id"], "succeeded") == (
            again.status_code,
            again.json()["id"],
            again.json()["status"],
        )
        assert "order-8" == again.json()["idempotency_key"]
        assert 1 == sim.create_calls("apiframe")

    async def test_the_key_with_another_request_is_409_and_sends_nothing(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        assert 201 == (await post_job(client, REQUEST, "order-9")).status_code
        for changed in (
            {**REQUEST, "metadata": {"order": 8}},
            {**REQUEST, "input": {**PROMPT, "duration": 10}},
            {**REQUEST, "provider": "rixapi"},
        ):
            answer = await post_job(client, changed, "order-9")
            assert 409 == answer.status_code, answer.text
            assert "different request" in answer.json()["error"]
        assert 1 == sim.create_calls("apiframe")
        assert 1 == len((await client.get("/jobs")).json()["items"])

    async def test_the_same_request_in_another_key_order_is_the_same_request(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        first = await post_job(client, REQUEST, "order-10")
        shuffled = {"metadata": {"order": 7}, "input": dict(reversed(PROMPT.items()))}
        again = await post_job(client, {**shuffled, "provider": "apiframe"}, "order-10")
        assert (200, first.json()["id"]) == (again.status_code, again.json()["id"])
        assert 1 == sim.create_calls("apiframe")

    @pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
    async def test_a_malformed_key_is_400_and_sends_nothing(
        self, client: httpx.AsyncClient, sim: RunningSimulator, key: str
    ) -> None:
        # httpx sends str headers as ASCII only: give the bytes as they are.
        headers = [(b"Idempotency-Key", key.encode())]
        answer = await client.post("/jobs", json=REQUEST, headers=headers)
        assert 400 == answer.status_code, answer.text
        assert "idempotency key" in answer.json()["error"]
        assert 0 == sim.create_calls("apiframe")

    async def test_without_a_key_each_post_is_a_new_job(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        answers = [await post_job(client, REQUEST) for _ in range(2)]
        assert [201, 201] == [answer.status_code for answer in answers]
        assert 2 == sim.create_calls("apiframe")


class TestKeyAndBudget:
    """A retry of a job that used up the day's budget answers that job, not 402."""

    async def test_a_replay_is_not_charged_again(
        self, tmp_path: Path, sim: RunningSimulator, handlers: Registry
    ) -> None:
        env = receiver_env(sim, RECEIVER_APIFRAME_PRICE_PER_JOB="1", RECEIVER_BUDGET_DAILY="1.5")
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as live,
            admin_client(live) as http,
        ):
            first = await post_job(http, REQUEST, "budget-1")
            again = await post_job(http, REQUEST, "budget-1")
            other = await post_job(http, REQUEST, "budget-2")
        assert (201, 200, 402) == (first.status_code, again.status_code, other.status_code)
        assert first.json()["id"] == again.json()["id"]
        assert 1 == sim.create_calls("apiframe")


class TestSubmitCommandKey:
    """`receiver submit --idempotency-key` submits once per key, on the database or RECEIVER_URL."""

    @pytest.fixture
    def cli_env(self, tmp_path: Path, sim: RunningSimulator) -> dict[str, str]:
        return {
            **receiver_env(sim),
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_HANDLERS": "",
        }

    async def test_the_same_key_twice_is_one_job_and_one_create(
        self, tmp_path: Path, cli_env: dict[str, str], sim: RunningSimulator
    ) -> None:
        args = ["submit", "apiframe", "prompt=a fox", "generation_type=text2video", "--json"]
        ids = []
        for _ in range(2):
            code, out, err = await run_cli(
                *args, "--idempotency-key", "fox-1", env=cli_env, cwd=tmp_path
            )
            assert 0 == code, err
            ids.append(json.loads(out)["id"])
        assert ids[0] == ids[1]
        assert 1 == sim.create_calls("apiframe")
        code, _, err = await run_cli(
            "submit",
            "apiframe",
            "prompt=a cat",
            "generation_type=text2video",
            "--idempotency-key",
            "fox-1",
            env=cli_env,
            cwd=tmp_path,
        )
        assert (2, 1) == (code, sim.create_calls("apiframe"))
        assert "different request" in err

    async def test_through_a_running_receiver_the_key_is_sent_as_a_header(
        self, tmp_path: Path, live: LiveReceiver, sim: RunningSimulator
    ) -> None:
        env = {"RECEIVER_URL": live.url, "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN}
        args = ["submit", "apiframe", "prompt=a fox", "generation_type=text2video", "-q"]
        outs = []
        for _ in range(2):
            code, out, err = await run_cli(
                *args, "--idempotency-key", "fox-2", env=env, cwd=tmp_path
            )
            assert 0 == code, err
            outs.append(out.strip())
        assert outs[0] == outs[1]
        assert 1 == sim.create_calls("apiframe")
        code, _, err = await run_cli(
            "submit", "apiframe", "prompt=x", "generation_type=text2video",
            "--idempotency-key", "fox-2", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert (2, 1) == (code, sim.create_calls("apiframe"))
        assert "different request" in err


@pytest.fixture
async def slow_live(
    tmp_path: Path, sim: RunningSimulator, handlers: Registry
) -> AsyncIterator[LiveReceiver]:
    """A receiver that waits 0.3 s for a create answer, and gives up on jobs after 3 s."""
    env = receiver_env(
        sim,
        RECEIVER_APIFRAME_TIMEOUT="0.3",
        RECEIVER_RIXAPI_TIMEOUT="0.3",
        RECEIVER_RIXAPI_BASE_URL=sim.base_url("rixapi"),
        RECEIVER_RIXAPI_API_KEY="rix-key",
        RECEIVER_GIVE_UP_AFTER="3",
    )
    async with running_receiver(tmp_path, handlers=handlers, env=env) as receiver:
        yield receiver


@pytest.fixture
async def slow_client(slow_live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=slow_live.url, headers=slow_live.admin_headers) as http:
        yield http


def ended(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


class TestUncertainCreate:
    """A create with no clear answer leaves the job queued, is never sent again, and the
    callbacks that follow reveal the task and finish the job."""

    async def test_a_create_answered_after_the_timeout_is_adopted_from_its_callbacks(
        self, slow_client: httpx.AsyncClient, sim: RunningSimulator, handled: Handled
    ) -> None:
        # The simulator answers after 1 s (the receiver waits 0.3 s); its callbacks come
        # at 0.6 s and 1.2 s, once the receiver has marked the create uncertain.
        sim.config.create_delay = 1.0
        sim.config.step_delay = 0.6
        answer = await post_job(slow_client, REQUEST)
        assert 201 == answer.status_code, answer.text
        submitted = answer.json()
        assert ("queued", None, "uncertain") == (
            submitted["status"],
            submitted["task_id"],
            submitted["create_state"],
        )
        job = await job_when(slow_client, submitted["id"], ended)
        await asyncio.sleep(0.3)  # time for a stray second handler call to show
        (task,) = sim.tasks()
        assert ("succeeded", task.task_id) == (job["status"], job["task_id"])
        assert job["result_url"] == task.result_url
        assert ["running", "succeeded"] == handled.of(submitted["id"])
        assert 1 == sim.create_calls("apiframe")

    async def test_an_unauthenticated_provider_task_is_adopted_and_confirmed(
        self, slow_client: httpx.AsyncClient, sim: RunningSimulator, handled: Handled
    ) -> None:
        # rixapi's callbacks carry no credential: the task id they reveal is adopted, and
        # the final state is believed once its status API confirms it.
        sim.config.create_delay = 1.0
        sim.config.step_delay = 0.6
        body = {"provider": "rixapi", "input": {"prompt": "cat", "model": "gen3"}}
        answer = await post_job(slow_client, body)
        assert ("queued", "uncertain") == (answer.json()["status"], answer.json()["create_state"])
        job = await job_when(slow_client, answer.json()["id"], ended)
        (task,) = sim.tasks()
        assert ("succeeded", task.task_id) == (job["status"], job["task_id"])
        assert "succeeded" == handled.of(job["id"])[-1]
        assert 1 == handled.of(job["id"]).count("succeeded")
        assert 1 == sim.create_calls("rixapi")

    @pytest.mark.parametrize("status_code", [502, 503, 504])
    async def test_a_gateway_error_is_not_a_failure(
        self, slow_client: httpx.AsyncClient, sim: RunningSimulator, status_code: int
    ) -> None:
        sim.config.create_error = status_code
        answer = await post_job(slow_client, REQUEST)
        assert ("queued", "uncertain") == (answer.json()["status"], answer.json()["create_state"])
        await asyncio.sleep(0.5)
        job = (await slow_client.get(f"/jobs/{answer.json()['id']}")).json()
        assert ("queued", 1) == (job["status"], sim.create_calls("apiframe"))

    async def test_receiver_job_says_the_create_is_uncertain(
        self,
        tmp_path: Path,
        slow_live: LiveReceiver,
        slow_client: httpx.AsyncClient,
        sim: RunningSimulator,
    ) -> None:
        sim.config.create_error = 502
        job_id = (await post_job(slow_client, REQUEST, "shown-1")).json()["id"]
        env = {"RECEIVER_URL": slow_live.url, "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN}
        code, out, err = await run_cli("job", job_id, env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "create    uncertain" in out and "the provider may have the task" in out
        assert "key       shown-1" in out

    async def test_no_news_by_the_give_up_age_fails_it_as_create_uncertain(
        self, slow_client: httpx.AsyncClient, sim: RunningSimulator, handled: Handled
    ) -> None:
        sim.config.create_delay = 1.0
        sim.config.lose = True  # the provider never calls back
        answer = await post_job(slow_client, REQUEST)
        started = time.monotonic()
        job = await job_when(slow_client, answer.json()["id"], ended, timeout=10)
        assert time.monotonic() - started >= 2.0  # RECEIVER_GIVE_UP_AFTER=3 from creation
        assert ("failed", "create_uncertain") == (job["status"], job["error_code"])
        assert "may have created the task" in job["error"]
        assert ["failed"] == handled.of(job["id"])
        assert 1 == sim.create_calls("apiframe")

    @pytest.mark.parametrize("status_code", [400, 401, 422])
    async def test_a_definite_refusal_still_fails_at_once(
        self, slow_client: httpx.AsyncClient, sim: RunningSimulator, status_code: int
    ) -> None:
        sim.config.create_error = status_code
        answer = await post_job(slow_client, REQUEST)
        job = answer.json()
        assert ("failed", str(status_code), None) == (
            job["status"],
            job["error_code"],
            job["create_state"],
        )


class TestCreateAskedToWait:
    """A create the provider answers with 429 (or 503 with Retry-After) waits and is sent
    again when the provider said, by the poller, without failing the job."""

    async def test_a_429_with_retry_after_is_sent_again_and_the_job_succeeds(
        self, client: httpx.AsyncClient, sim: RunningSimulator, handled: Handled
    ) -> None:
        sim.config.create_error = 429
        sim.config.create_retry_after = 1
        sim.config.create_error_times = 1
        started = time.monotonic()
        answer = await post_job(client, REQUEST, "wait-1")
        assert 201 == answer.status_code, answer.text
        submitted = answer.json()
        assert ("queued", "waiting", None) == (
            submitted["status"],
            submitted["create_state"],
            submitted["task_id"],
        )
        job = await job_when(client, submitted["id"], ended)
        assert time.monotonic() - started >= 1.0  # not before the provider said
        (task,) = sim.tasks()
        assert ("succeeded", task.task_id, None) == (
            job["status"],
            job["task_id"],
            job["create_state"],
        )
        assert 2 == sim.create_calls("apiframe")
        assert ["running", "succeeded"] == handled.of(job["id"])
        # The retried create went out with a working callback URL and secret of its own.
        assert all(callback.status_code == 200 for callback in task.callbacks)

    async def test_a_503_with_retry_after_waits_too(
        self, client: httpx.AsyncClient, sim: RunningSimulator
    ) -> None:
        sim.config.create_error = 503
        sim.config.create_retry_after = 1
        sim.config.create_error_times = 1
        answer = await post_job(client, REQUEST)
        assert "waiting" == answer.json()["create_state"]
        job = await job_when(client, answer.json()["id"], ended)
        assert ("succeeded", 2) == (job["status"], sim.create_calls("apiframe"))

    async def test_the_wait_survives_a_restart(
        self, tmp_path: Path, sim: RunningSimulator, handlers: Registry, handled: Handled
    ) -> None:
        sim.config.create_error = 429
        sim.config.create_retry_after = 2
        sim.config.create_error_times = 1
        env = receiver_env(sim)
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as first,
            admin_client(first) as http,
        ):
            job_id = (await post_job(http, REQUEST)).json()["id"]
        assert 1 == sim.create_calls("apiframe")
        async with (
            running_receiver(tmp_path, handlers=handlers, env=env) as second,
            admin_client(second) as http,
        ):
            job = await job_when(http, job_id, ended)
        assert ("succeeded", 2) == (job["status"], sim.create_calls("apiframe"))
        assert ["running", "succeeded"] == handled.of(job_id)
