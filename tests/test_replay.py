"""Dead letters over the admin API: listed with `state=dead`, replayed under the same id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.dispatch import DeliveryInfo, Registry
from receiver.models import Event, Job, Status, Update, new_id, now
from receiver.store import NewJob, Write
from receiver.testing import LiveReceiver, running_receiver


class Flaky:
    """A handler that fails while `broken` is set and remembers every delivery id it saw."""

    def __init__(self, registry: Registry, name: str = "flaky") -> None:
        self.broken = True
        self.seen: list[str] = []

        async def handle(event: Event, job: Job, delivery: DeliveryInfo) -> None:
            self.seen.append(delivery.id)
            if self.broken:
                raise RuntimeError("downstream is down")

        handle.__qualname__ = name
        registry.on("*")(handle)


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def flaky(registry: Registry) -> Flaky:
    return Flaky(registry)


@pytest.fixture
async def live(tmp_path: Path, registry: Registry, flaky: Flaky) -> AsyncIterator[LiveReceiver]:
    env = {"RECEIVER_HANDLER_MAX_ATTEMPTS": "1"}
    async with running_receiver(tmp_path, handlers=registry, env=env) as receiver:
        yield receiver


@pytest.fixture
async def client(live: LiveReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10, headers=live.admin_headers) as c:
        yield c


async def dead_job(live: LiveReceiver, task_id: str = "t1") -> str:
    """A job whose one event's delivery died; returns the job id."""
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
    await live.runtime.ingest.record(
        Write(
            update=Update(status=Status.RUNNING, raw_status="processing"),
            source="poll",
            job_id=job.id,
        )
    )
    await until(live, lambda states: states == ["dead"], job.id)
    return job.id


async def until(live: LiveReceiver, check: Any, job_id: str | None = None) -> None:
    """Wait (10 s at most) until `check` holds for the states of the job's deliveries."""
    for _ in range(200):
        deliveries = await live.runtime.store.list_deliveries(job_id=job_id)
        if check([d.state.value for d in deliveries]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries never got there: {deliveries}")


class TestDeadLetters:
    """Dead deliveries are listed with their error and replayed with the same id."""

    async def test_listed_with_state_dead(
        self, live: LiveReceiver, client: httpx.AsyncClient
    ) -> None:
        """`GET /deliveries?state=dead` shows the dead delivery with its last error."""
        job_id = await dead_job(live)
        answer = await client.get("/deliveries", params={"state": "dead"})
        [item] = answer.json()["items"]
        assert (job_id, "dead", 1) == (item["job_id"], item["state"], item["attempts"])
        assert "downstream is down" in item["last_error"]

    async def test_replay_by_id_runs_the_handler_with_the_same_key(
        self, live: LiveReceiver, client: httpx.AsyncClient, flaky: Flaky
    ) -> None:
        """The handler runs again with the same delivery id, at once (the dispatcher is woken)."""
        job_id = await dead_job(live)
        [dead] = await live.runtime.store.list_deliveries(job_id=job_id)
        # Without a wake-up the dispatcher would sleep far past the wait below.
        live.runtime.dispatcher.idle_wait = 60.0
        await asyncio.sleep(1.1)  # the sleep it was already in runs out
        flaky.broken = False
        answer = await client.post(f"/deliveries/{dead.id}/replay")
        assert 200 == answer.status_code
        assert [(dead.id, "pending")] == [(d["id"], d["state"]) for d in answer.json()["items"]]
        await until(live, lambda states: states == ["done"], job_id)
        assert [dead.id, dead.id] == flaky.seen

    async def test_replay_of_an_unknown_delivery_is_404(self, client: httpx.AsyncClient) -> None:
        """Replaying a delivery that does not exist (or is not finished) is not found."""
        answer = await client.post("/deliveries/dlv_nope/replay")
        assert 404 == answer.status_code

    async def test_replay_by_job_and_all_dead(
        self, live: LiveReceiver, client: httpx.AsyncClient, flaky: Flaky
    ) -> None:
        """A job filter replays that job's dead deliveries; `all_dead` replays the rest."""
        first = await dead_job(live, "t1")
        second = await dead_job(live, "t2")
        flaky.broken = False
        answer = await client.post("/deliveries/replay", json={"job_id": first})
        assert [first] == [d["job_id"] for d in answer.json()["items"]]
        await until(live, lambda states: states == ["done"], first)
        assert ["dead"] == [
            d.state.value for d in await live.runtime.store.list_deliveries(job_id=second)
        ]
        answer = await client.post("/deliveries/replay", json={"all_dead": True})
        assert [second] == [d["job_id"] for d in answer.json()["items"]]
        await until(live, lambda states: states == ["done", "done"])

    async def test_replay_by_handler(
        self, live: LiveReceiver, client: httpx.AsyncClient, flaky: Flaky
    ) -> None:
        """A handler filter replays only that handler's dead deliveries."""
        await dead_job(live)
        [dead] = await live.runtime.store.list_deliveries()
        answer = await client.post("/deliveries/replay", json={"handler": "other"})
        assert [] == answer.json()["items"]
        answer = await client.post("/deliveries/replay", json={"handler": dead.handler})
        assert [dead.id] == [d["id"] for d in answer.json()["items"]]

    @pytest.mark.parametrize(
        "body", [{}, {"all_dead": True, "include_done": True}, {"job": "x"}, {"all_dead": "yes"}]
    )
    async def test_unclear_replay_is_400(
        self, live: LiveReceiver, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> None:
        """A replay that names nothing, or names it wrongly, is refused and replays nothing."""
        await dead_job(live)
        answer = await client.post("/deliveries/replay", json=body)
        assert 400 == answer.status_code
        assert 1 == len(await live.runtime.store.list_deliveries(state=None))
        assert ["dead"] == [d.state.value for d in await live.runtime.store.list_deliveries()]

    async def test_replay_needs_the_admin_token(self, live: LiveReceiver) -> None:
        """Listing and replaying dead letters are admin routes."""
        async with httpx.AsyncClient(base_url=live.url) as anonymous:
            for method, path in (
                ("GET", "/deliveries"),
                ("POST", "/deliveries/replay"),
                ("POST", "/deliveries/x/replay"),
                ("GET", "/quarantine"),
            ):
                answer = await anonymous.request(method, path, json={"all_dead": True})
                assert 401 == answer.status_code, path
