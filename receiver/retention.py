"""Retention: what is older than `RECEIVER_RETENTION` is deleted, in small batches.

`Pruner` runs in `receiver serve` and `receiver worker`; `receiver prune` runs one pass on
demand. A pass deletes `Store.prune` batch after batch, pausing between them so that
callbacks committing meanwhile never wait behind more than one short batch, then gives
the freed pages of a SQLite file back in small steps (`Store.reclaim`). Several pruners
sharing one PostgreSQL database take different rows and never wait on each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from receiver.errors import StoreUnavailable
from receiver.store.base import PRUNED_TABLES, Store

__all__ = [
    "BATCH",
    "PruneReport",
    "Pruner",
    "prune_all",
]

log = logging.getLogger("receiver.retention")

# Rows per table per batch. On SQLite each table's batch is one item of the group commit,
# and callbacks in the same flush wait for it (deploy/bench/prune_batches.py): 200 events
# with their deliveries took 2.9 ms (median, 10 ms at most on a busy 2-core machine), 200
# requests 2.0 ms; 500 events took 5.6 ms (24 ms at most).
BATCH = 200
PAUSE = 0.02  # seconds between batches, in which queued callbacks get the writer
RECLAIM_PAGES = 256  # pages given back per step: 1 MiB of 4 KiB pages, 2 ms (median)


@dataclasses.dataclass
class PruneReport:
    """What one pass deleted (or, dry, would delete) per table, and how its batches went."""

    counts: dict[str, int]
    batches: int = 0
    longest: float = 0.0  # seconds, the slowest batch (all its tables' writes)
    free_pages: int = 0  # free pages left in a SQLite file after reclaiming

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def prune_all(
    store: Store,
    *,
    before: float,
    jobs: bool = False,
    dry_run: bool = False,
    limit: int = BATCH,
    pause: float = PAUSE,
) -> PruneReport:
    """Delete everything `Store.prune` would, older than `before`, batch by batch."""
    if dry_run:
        return PruneReport(
            counts=await store.prune(before=before, limit=limit, dry_run=True, jobs=jobs)
        )
    report = PruneReport(counts=dict.fromkeys(PRUNED_TABLES, 0))
    while True:
        started = time.perf_counter()
        counts = await store.prune(before=before, limit=limit, jobs=jobs)
        report.longest = max(report.longest, time.perf_counter() - started)
        report.batches += 1
        for table, count in counts.items():
            report.counts[table] += count
        # Deliveries go with their events, so the events' count says whether more remain.
        if all(counts[table] < limit for table in PRUNED_TABLES if table != "deliveries"):
            break
        await asyncio.sleep(pause)
    if report.total:
        report.free_pages = await _reclaim(store, pause)
    return report


async def _reclaim(store: Store, pause: float) -> int:
    """Give free pages back a step at a time, until none is left or none can go."""
    free = await store.reclaim(RECLAIM_PAGES)
    while free > 0:
        await asyncio.sleep(pause)
        left = await store.reclaim(RECLAIM_PAGES)
        if left >= free:  # a file not (yet) in incremental auto-vacuum cannot give back
            return left
        free = left
    return free


class Pruner:
    """The background loop: a pass every `every` seconds, of rows older than `retention`."""

    def __init__(
        self,
        store: Store,
        retention: float,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.time,
        limit: int = BATCH,
        pause: float = PAUSE,
    ):
        self.store = store
        self.retention = retention
        # Often enough that nothing outlives the retention by more than a quarter of it.
        self.every = every if every is not None else min(300.0, max(1.0, retention / 4))
        self.clock = clock
        self.limit = limit
        self.pause = pause
        self.last: PruneReport | None = None

    async def once(self) -> PruneReport:
        """One pass now."""
        report = await prune_all(
            self.store, before=self.clock() - self.retention, limit=self.limit, pause=self.pause
        )
        self.last = report
        if report.total:
            log.info(
                "pruned %s in %d batches (longest %.1f ms)",
                ", ".join(f"{count} {table}" for table, count in report.counts.items() if count),
                report.batches,
                report.longest * 1000,
            )
        return report

    async def run(self) -> None:
        """Prune every `every` seconds until cancelled; a retention of 0 keeps everything."""
        if self.retention <= 0:
            return
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.once()
            except StoreUnavailable as exc:
                log.warning("pruning skipped, the store is unavailable: %s", exc)
            except Exception:
                log.exception("pruning failed; trying again in %.0f s", self.every)
