"""The work loop shared by the dispatcher and the poller survives what goes wrong in a round."""

from __future__ import annotations

import asyncio

from receiver.errors import StoreUnavailable
from receiver.loop import WorkLoop


class Flaky(WorkLoop):
    """A loop whose rounds fail as scripted, then count successes."""

    def __init__(self, failures: list[BaseException]):
        super().__init__(idle_wait=0.01)
        self.failures = failures
        self.rounds = 0

    async def run_once(self) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.rounds += 1
        return 0

    async def next_due(self) -> float | None:
        return None


class TestWorkLoop:
    """A failing round makes the loop back off and go on, never end."""

    async def test_store_faults_and_bugs_do_not_end_the_loop(self) -> None:
        """After a store fault and an unexpected error, later rounds still run."""
        loop = Flaky([StoreUnavailable("locked"), RuntimeError("a bug")])
        task = asyncio.create_task(loop.run())
        for _ in range(400):
            if loop.rounds >= 2:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
        await asyncio.wait_for(task, timeout=5)
        assert [] == loop.failures
        assert loop.rounds >= 2

    async def test_wake_ends_the_sleep_early(self) -> None:
        """A wake-up starts the next round before `idle_wait` runs out."""
        loop = Flaky([])
        loop.idle_wait = 30.0
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.05)
        rounds = loop.rounds
        loop.wake()
        await asyncio.sleep(0.05)
        assert rounds + 1 == loop.rounds
        await loop.stop()
        await asyncio.wait_for(task, timeout=5)
