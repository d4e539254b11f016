"""A PostgreSQL server restart under load: 503 with Retry-After while it is down, and full
recovery without restarting the receiver. It restarts the shared test server, so it is
marked `disruptive` and runs after every other test (see conftest)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from receiver.dispatch import Registry
from receiver.models import DeliveryState, Event, Job, now
from receiver.store.postgres import PostgresStore
from receiver.testing import running_receiver

SECRET = "static-secret-for-the-restart-test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def restart_postgres() -> float:
    """Restart the local cluster (fast shutdown); return how long it took."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return time.monotonic() - started


def callback(task: str) -> dict[str, object]:
    return {
        "task_id": task,
        "task_type": "runway",
        "status": "finished",
        "percentage": 100,
        "video_url": f"https://cdn.example/{task}.mp4",
    }


@pytest.mark.disruptive
@pytest.mark.slow
class TestServerRestart:
    """Ingest and handlers ride out a database restart and recover on their own."""

    async def test_restart_mid_run(self, pg_url: str, tmp_path: Path, registry: Registry) -> None:
        """Callbacks get 200 or 503+Retry-After during a restart; every one acked is handled."""
        if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
            message = "needs a local PostgreSQL cluster managed by pg_ctlcluster"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        handled: list[str] = []

        @registry.on("*")
        async def record(event: Event, job: Job) -> None:
            assert job.task_id is not None
            handled.append(job.task_id)

        env = {
            "RECEIVER_DATABASE_URL": f"{pg_url}?pool_timeout=1",
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
            "RECEIVER_HANDLER_TIMEOUT": "1",  # a lease lost in the outage comes back in 31 s
            "RECEIVER_RETRY_AFTER": "1",
        }
        # Another process's worker, idle: it must be woken by NOTIFY after the restart too.
        listener = PostgresStore(pg_url)
        await listener.open()
        wakes: list[float] = []
        await listener.listen({"deliveries": lambda: wakes.append(time.monotonic())})
        acked: set[str] = set()
        refused: list[str] = []
        retry_after: set[str | None] = set()
        stop = asyncio.Event()
        try:
            async with (
                running_receiver(tmp_path, env=env, handlers=registry) as live,
                httpx.AsyncClient(base_url=live.url, timeout=10) as client,
            ):

                async def post(task: str) -> int:
                    answer = await client.post(
                        "/hooks/apiframe", json=callback(task), headers={"x-webhook-secret": SECRET}
                    )
                    assert answer.status_code in (200, 503), answer.text
                    if answer.status_code == 200:
                        acked.add(task)
                    else:
                        refused.append(task)
                        retry_after.add(answer.headers.get("retry-after"))
                    return answer.status_code

                async def sender(lane: int) -> None:
                    n = 0
                    while not stop.is_set():
                        await post(f"task-{lane}-{n}")
                        n += 1
                        await asyncio.sleep(0.01)

                senders = [asyncio.create_task(sender(lane)) for lane in range(4)]
                while len(acked) < 50:
                    await asyncio.sleep(0.05)
                restarting = time.monotonic()
                outage = await asyncio.to_thread(restart_postgres)
                after = len(acked)
                deadline = time.monotonic() + 30
                while len(acked) < after + 50:  # ingest recovered without a restart
                    assert time.monotonic() < deadline, "ingest did not recover after the restart"
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.gather(*senders)

                # The listener reconnected (it wakes once on reconnecting, which may be before
                # pg_ctlcluster returns); then a NOTIFY of a new commit, which only a new
                # connection can hear, reaches it. A callback's own deliveries run in the
                # receiver that took it (claimed as they are written: no NOTIFY), so the
                # commit is a replay of one of them, which leaves it pending for any worker.
                while not [t for t in wakes if t > restarting]:
                    assert time.monotonic() < deadline, "the listener did not reconnect"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                before = len(wakes)
                store = live.runtime.store
                done = await store.list_deliveries(state=DeliveryState.DONE, limit=1)
                await store.replay_deliveries(
                    delivery_id=done[0].id, states=frozenset({DeliveryState.DONE}), at=now()
                )
                while len(wakes) == before:
                    assert time.monotonic() < deadline, "no NOTIFY after the restart"
                    await asyncio.sleep(0.01)

                # The provider retries what was refused, after Retry-After.
                for task in sorted(set(refused) - acked):
                    for _ in range(20):
                        if await post(task) == 200:
                            break
                        await asyncio.sleep(1)
                assert set() == set(refused) - acked

                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    states = {d.state for d in await store.list_deliveries(limit=100_000)}
                    if states <= {DeliveryState.DONE} and len(set(handled)) >= len(acked):
                        break
                    await asyncio.sleep(0.2)
                deliveries = await store.list_deliveries(limit=100_000)

        finally:
            await listener.close()

        assert refused, "the restart should have refused some callbacks"
        assert {"1"} == retry_after
        assert len(acked) == len(deliveries)
        assert {DeliveryState.DONE} == {d.state for d in deliveries}
        assert set() == acked - set(handled)
        print(
            f"\nrestart: {outage:.1f}s restart, {len(acked)} acked, {len(refused)} answered 503,"
            f" {len(handled) - len(set(handled))} handler runs repeated"
        )
