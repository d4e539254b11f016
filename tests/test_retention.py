"""Retention: what is past RECEIVER_RETENTION is deleted, on both backends, and nothing else.

The clock is injected (`at` on every write, `before` on every prune): no test waits for
the retention to pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import procs
import pytest
from test_store import make_job, route_to

from receiver.config import load_settings
from receiver.errors import ConfigError
from receiver.models import DeliveryState, Quarantined, RawRequest, Status, Update, id_at
from receiver.retention import Pruner, prune_all
from receiver.store import NewJob, SQLiteStore, Store
from receiver.store.base import PRUNED_TABLES, Write

DAY = 86400.0
T0 = 1_000_000.0  # when the old jobs ran
RETENTION = 30 * DAY
NOW = T0 + 40 * DAY  # the old jobs ended 40 days before now
BEFORE = NOW - RETENTION


def raw(at: float, *, size: int = 200) -> RawRequest:
    """A request received at `at`, its id minted then (the retention walks requests by id)."""
    return RawRequest(
        id=id_at("req", at),
        received_at=at,
        provider="rixapi",
        method="POST",
        path="/hooks/rixapi/[token]",
        query="",
        headers={"content-type": "application/json"},
        body=b"x" * size,
        client="127.0.0.1",
    )


def quarantined(entry_id: str, at: float) -> Quarantined:
    return Quarantined(
        id=entry_id,
        received_at=at,
        provider="apiframe",
        reason="wrong_secret",
        status_code=401,
        method="POST",
        path="/hooks/apiframe/[token]",
        query="",
        headers={},
        body=b"{}",
        client="127.0.0.1",
    )


async def job_with_story(
    store: Store, job_id: str, statuses: list[Status], *, at: float, handlers: int = 2
) -> None:
    """A job with one raw request, event and `handlers` deliveries per status, all at `at`."""
    await store.create_job(NewJob(job=make_job(job_id, task_id=f"task-{job_id}", at=at)))
    for n, status in enumerate(statuses):
        update = Update(status=status, raw_status=status.value, progress=0.5 if n == 0 else None)
        await store.record(
            Write(
                update=update,
                source="callback",
                job_id=job_id,
                raw=raw(at + n),
                at=at + n,
            ),
            route=route_to(*(f"h{i}" for i in range(handlers))),
        )


async def finish_deliveries(store: Store, job_id: str, *, at: float) -> None:
    for delivery in await store.list_deliveries(job_id=job_id):
        await store.finish_delivery(delivery.id, at=at)


async def rows(store: Store, job_id: str) -> tuple[int, int, int]:
    """How many events, requests and deliveries the job still has."""
    events = await store.list_events(job_id)
    requests = await store.list_requests(job_id)
    deliveries = await store.list_deliveries(job_id=job_id)
    return len(events), len(requests), len(deliveries)


@pytest.fixture
async def story(store: Store) -> Store:
    """Old jobs ended (handlers done), an old job still open, an old ended job with a
    pending delivery, a recent ended job, old and recent quarantine rows, and an old
    nudge request for no job."""
    await job_with_story(store, "job_ended", [Status.RUNNING, Status.SUCCEEDED], at=T0)
    await finish_deliveries(store, "job_ended", at=T0 + 10)
    await job_with_story(store, "job_failed", [Status.FAILED], at=T0)
    await finish_deliveries(store, "job_failed", at=T0 + 10)
    await job_with_story(store, "job_open", [Status.RUNNING], at=T0)
    await finish_deliveries(store, "job_open", at=T0 + 10)
    await job_with_story(store, "job_pending", [Status.SUCCEEDED], at=T0)
    await job_with_story(store, "job_recent", [Status.SUCCEEDED], at=NOW - DAY)
    await finish_deliveries(store, "job_recent", at=NOW - DAY)
    await store.quarantine(quarantined("q_old", T0))
    await store.quarantine(quarantined("q_recent", NOW - DAY))
    return store


class TestPrune:
    """Rows of jobs that ended before the cutoff go; open jobs and unfinished deliveries stay."""

    async def test_ended_jobs_rows_go_and_nothing_else(self, story: Store) -> None:
        report = await prune_all(story, before=BEFORE)
        assert (0, 0, 0) == await rows(story, "job_ended")
        assert (0, 0, 0) == await rows(story, "job_failed")
        assert (1, 1, 2) == await rows(story, "job_open")
        assert (1, 1, 2) == await rows(story, "job_pending")
        assert (1, 1, 2) == await rows(story, "job_recent")
        assert ["q_recent"] == [q.id for q in await story.list_quarantine()]
        assert {"deliveries": 6, "events": 3, "requests": 3, "quarantine": 1, "jobs": 0} == (
            report.counts
        )
        # Jobs themselves stay unless asked.
        for job_id in ("job_ended", "job_failed"):
            assert (await story.get_job(job_id)) is not None

    async def test_open_jobs_rows_never_go(self, story: Store) -> None:
        await prune_all(story, before=NOW + 1000 * DAY)
        assert (1, 1, 2) == await rows(story, "job_open")
        assert Status.RUNNING == (await story.get_job("job_open")).status  # type: ignore[union-attr]

    async def test_pending_deliveries_never_go(self, story: Store) -> None:
        [running, _pending] = await story.list_deliveries(job_id="job_pending")
        claimed = await story.claim_deliveries(limit=1, lease=60, at=NOW)
        assert [running.id] == [c.delivery.id for c in claimed]
        await prune_all(story, before=NOW + 1000 * DAY, jobs=True)
        states = [d.state for d in await story.list_deliveries(job_id="job_pending")]
        assert [DeliveryState.RUNNING, DeliveryState.PENDING] == states
        assert (1, 1, 2) == await rows(story, "job_pending")
        assert (await story.get_job("job_pending")) is not None
        # Once its handlers are done, the job's rows go like the others'.
        await finish_deliveries(story, "job_pending", at=NOW)
        await prune_all(story, before=NOW + 1000 * DAY)
        assert (0, 0, 0) == await rows(story, "job_pending")

    async def test_dead_deliveries_go_with_their_job(self, story: Store) -> None:
        for delivery in await story.list_deliveries(job_id="job_pending"):
            await story.kill_delivery(delivery.id, error="gave up", at=T0 + 5)
        await prune_all(story, before=BEFORE)
        assert (0, 0, 0) == await rows(story, "job_pending")

    async def test_recent_rows_stay_until_they_are_old(self, story: Store) -> None:
        await prune_all(story, before=BEFORE)
        assert (1, 1, 2) == await rows(story, "job_recent")
        await prune_all(story, before=NOW)
        assert (0, 0, 0) == await rows(story, "job_recent")
        assert [] == await story.list_quarantine()

    async def test_jobs_go_only_when_asked(self, story: Store) -> None:
        report = await prune_all(story, before=BEFORE, jobs=True)
        assert 2 == report.counts["jobs"]
        for job_id in ("job_ended", "job_failed"):
            assert (await story.get_job(job_id)) is None
        for job_id in ("job_open", "job_pending", "job_recent"):
            assert (await story.get_job(job_id)) is not None

    async def test_small_batches_delete_everything(self, story: Store) -> None:
        report = await prune_all(story, before=BEFORE, limit=1, pause=0)
        assert 3 == report.counts["events"] and 1 == report.counts["quarantine"]
        assert report.batches >= 3
        assert (0, 0, 0) == await rows(story, "job_ended")

    async def test_dry_run_counts_and_deletes_nothing(self, story: Store) -> None:
        counts = await story.prune(before=BEFORE, limit=1, dry_run=True, jobs=True)
        assert {"deliveries": 6, "events": 3, "requests": 3, "quarantine": 1, "jobs": 2} == counts
        assert (2, 2, 4) == await rows(story, "job_ended")
        assert 2 == len(await story.list_quarantine())
        report = await prune_all(story, before=BEFORE, jobs=True)
        assert counts == report.counts

    async def test_a_second_pass_finds_nothing(self, story: Store) -> None:
        await prune_all(story, before=BEFORE)
        again = await prune_all(story, before=BEFORE)
        assert dict.fromkeys(PRUNED_TABLES, 0) == again.counts


class TestRequestsOfNoJob:
    """Requests that belong to no job (a nudge for an unknown job) go by their own age."""

    async def test_by_age(self, store: Store) -> None:
        old, new, open_ = raw(T0), raw(NOW), raw(T0)
        await store.record_nudge("job_unknown", old, poll_at=T0)
        await store.record_nudge("job_unknown", new, poll_at=NOW)
        await store.create_job(NewJob(job=make_job("job_open", at=T0)))
        await store.record_nudge("job_open", open_, poll_at=T0)
        report = await prune_all(store, before=BEFORE)
        assert 1 == report.counts["requests"]
        assert [new.id] == [r.id for r in await store.list_requests("job_unknown")]
        assert [open_.id] == [r.id for r in await store.list_requests("job_open")]


class TestPruner:
    """The background loop prunes on its own, with the clock it is given."""

    async def test_runs_and_prunes(self, story: Store) -> None:
        pruner = Pruner(story, RETENTION, every=0.01, clock=lambda: NOW)
        task = asyncio.create_task(pruner.run())
        try:
            for _ in range(500):
                if pruner.last is not None:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert pruner.last is not None and 3 == pruner.last.counts["events"]
        assert (0, 0, 0) == await rows(story, "job_ended")

    async def test_zero_keeps_everything(self, story: Store) -> None:
        await asyncio.wait_for(Pruner(story, 0, every=0.01, clock=lambda: NOW).run(), 1)
        assert (2, 2, 4) == await rows(story, "job_ended")


class TestSetting:
    """RECEIVER_RETENTION takes a duration and says what is wrong with a bad one."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("30d", 30 * DAY),
            ("12h", 43200.0),
            ("90m", 5400.0),
            ("45s", 45.0),
            ("3600", 3600.0),
            ("0", 0.0),
            ("1.5", 1.5),
        ],
    )
    def test_durations(self, text: str, seconds: float) -> None:
        assert seconds == load_settings({"RECEIVER_RETENTION": text}).retention_seconds()

    def test_default_is_30_days(self) -> None:
        assert 30 * DAY == load_settings({}).retention_seconds()

    @pytest.mark.parametrize("text", ["abc", "-1", "30 days", "", "1w"])
    def test_bad_values(self, text: str) -> None:
        with pytest.raises(ConfigError, match="RECEIVER_RETENTION"):
            load_settings({"RECEIVER_RETENTION": text})


def page_setting(path: Path, pragma: str) -> Any:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"PRAGMA {pragma}").fetchone()[0]


class TestSQLiteSpace:
    """A SQLite file uses incremental auto-vacuum, so pruned space leaves the file."""

    async def test_new_files_are_incremental(self, tmp_path: Path) -> None:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'new.db'}")
        await store.open()
        await store.close()
        assert 2 == page_setting(tmp_path / "new.db", "auto_vacuum")

    async def test_an_older_file_is_converted_once(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as connection:  # as the receiver made it before retention
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("CREATE TABLE filler (x BLOB)")
            connection.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 1000,)] * 200)
        assert 0 == page_setting(path, "auto_vacuum")
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        await store.close()
        assert 2 == page_setting(path, "auto_vacuum")
        with sqlite3.connect(path) as connection:
            assert 200 == connection.execute("SELECT COUNT(*) FROM filler").fetchone()[0]

    async def test_pruning_gives_pages_back(self, tmp_path: Path) -> None:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'r.db'}")
        await store.open()
        try:
            for n in range(300):
                await job_with_story(store, f"job_{n}", [Status.SUCCEEDED], at=T0, handlers=1)
                await finish_deliveries(store, f"job_{n}", at=T0)
            report = await prune_all(store, before=BEFORE)
            assert 300 == report.counts["events"]
            assert 0 == report.free_pages
        finally:
            await store.close()
        assert 0 == page_setting(tmp_path / "r.db", "freelist_count")


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`python -m receiver ARGS` with no handlers module: exit code, stdout and stderr."""
    return await procs.run_cli(*args, env={"RECEIVER_HANDLERS": "", **env}, cwd=cwd)


class TestPruneCommand:
    """`receiver prune` deletes what is past the retention now; `--dry-run` only counts it."""

    async def test_dry_run_counts_then_prune_deletes(
        self, story: Store, store_url: str, tmp_path: Path
    ) -> None:
        env = {"RECEIVER_DATABASE_URL": store_url}
        code, out, err = await run_cli("prune", "--dry-run", "--json", env=env, cwd=tmp_path)
        assert 0 == code, err
        dry = json.loads(out)
        # Every story row is from 1970: all of it is past 30 days but the open job's and
        # the one with unfinished deliveries.
        expected = {"deliveries": 8, "events": 4, "requests": 4, "quarantine": 2, "jobs": 0}
        assert {"dry_run": True, "counts": expected} == dry
        assert (2, 2, 4) == await rows(story, "job_ended")
        assert 2 == len(await story.list_quarantine())
        code, out, err = await run_cli("prune", "--json", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert {"dry_run": False, "counts": expected} == json.loads(out)
        for job_id in ("job_ended", "job_failed", "job_recent"):
            assert (0, 0, 0) == await rows(story, job_id)
        assert (1, 1, 2) == await rows(story, "job_open")
        assert (1, 1, 2) == await rows(story, "job_pending")
        assert [] == await story.list_quarantine()

    async def test_jobs_and_retention_options(
        self, story: Store, store_url: str, tmp_path: Path
    ) -> None:
        env = {"RECEIVER_DATABASE_URL": store_url}
        code, out, _ = await run_cli("prune", "--retention", "30000d", env=env, cwd=tmp_path)
        assert 0 == code
        assert ["deleted 0 deliveries", "deleted 0 events"] == [
            " ".join(line.split()) for line in out.splitlines()[:2]
        ]
        assert (2, 2, 4) == await rows(story, "job_ended")
        code, out, _ = await run_cli("prune", "--jobs", "--dry-run", env=env, cwd=tmp_path)
        assert "would delete 3 jobs" in [" ".join(line.split()) for line in out.splitlines()]
        code, out, _ = await run_cli("prune", "--jobs", env=env, cwd=tmp_path)
        assert "deleted 3 jobs" in [" ".join(line.split()) for line in out.splitlines()]
        assert (await story.get_job("job_ended")) is None
        assert (await story.get_job("job_open")) is not None

    async def test_zero_keeps_everything(
        self, story: Store, store_url: str, tmp_path: Path
    ) -> None:
        env = {"RECEIVER_DATABASE_URL": store_url, "RECEIVER_RETENTION": "0"}
        code, out, _ = await run_cli("prune", env=env, cwd=tmp_path)
        assert 0 == code and "nothing pruned" in out
        assert (2, 2, 4) == await rows(story, "job_ended")


class TestPruneCommandUsage:
    """`receiver prune --help` names its variables; a bad retention is one clear line."""

    async def test_help_names_the_variables(self, tmp_path: Path) -> None:
        code, out, _ = await run_cli("prune", "--help", env={}, cwd=tmp_path)
        assert 0 == code
        for variable in ("RECEIVER_RETENTION", "RECEIVER_DATABASE_URL"):
            assert variable in out

    async def test_bad_retention(self, tmp_path: Path) -> None:
        env = {"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
        code, out, err = await run_cli("prune", "--retention", "soon", env=env, cwd=tmp_path)
        assert (2, "") == (code, out)
        assert "RECEIVER_RETENTION must be a duration" in err and "Traceback" not in err


class TestConcurrentPruners:
    """Pruners in several processes on one database share the work and never fail."""

    async def test_two_stores_prune_at_once(self, make_store: Any) -> None:
        first, second = make_store(), make_store()
        await first.open()
        await second.open()
        try:
            for n in range(30):
                statuses = [Status.RUNNING, Status.SUCCEEDED]
                await job_with_story(first, f"job_{n:02d}", statuses, at=T0)
                await finish_deliveries(first, f"job_{n:02d}", at=T0 + 10)
            reports = await asyncio.gather(
                prune_all(first, before=BEFORE, limit=7, pause=0, jobs=True),
                prune_all(second, before=BEFORE, limit=7, pause=0, jobs=True),
            )
            totals = {t: sum(r.counts[t] for r in reports) for t in PRUNED_TABLES}
            assert {"deliveries": 120, "events": 60, "requests": 60, "quarantine": 0} == {
                t: c for t, c in totals.items() if t != "jobs"
            }
            # A job goes once its rows are gone; a pass that finished before the other
            # deleted a job's last rows leaves that job for the next pass.
            again = await prune_all(first, before=BEFORE, jobs=True)
            assert 30 == totals["jobs"] + again.counts["jobs"]
            assert [] == (await first.list_jobs()).items
        finally:
            await first.close()
            await second.close()


class TestWorkerPrunes:
    """`receiver worker` runs the pruner beside its loops."""

    async def test_worker_deletes_old_rows(
        self, story: Store, store_url: str, tmp_path: Path
    ) -> None:
        env = {**os.environ, "RECEIVER_HANDLERS": "", "RECEIVER_DATABASE_URL": store_url}
        env["RECEIVER_RETENTION"] = "1"  # a pass every second
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "worker",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for _ in range(200):
                if (0, 0, 0) == await rows(story, "job_ended"):
                    break
                await asyncio.sleep(0.05)
            assert (0, 0, 0) == await rows(story, "job_ended")
            assert (1, 1, 2) == await rows(story, "job_open")
        finally:
            process.terminate()
            _, err = await asyncio.wait_for(process.communicate(), 30)
        assert 0 == process.returncode, err.decode()
