"""Migration 0014: the retention walks events and requests by id, and the job list walks
succeeded jobs by id; the indexes that made redundant are gone, the queries they served
still use an index, and a database filled before 0014 is pruned, listed and counted as
before. Both backends.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from old_schema import (
    carried_forward,
    index_definition,
    index_names,
    sqlite_migrated,
)
from test_retention import raw
from test_store import add_job

from receiver.models import Status, id_at
from receiver.retention import prune_all
from receiver.store import Store
from receiver.store.rows import (
    JOB_COUNTS,
    NOT_SUCCEEDED,
    PRICED,
    list_status_terms,
    spend_bound,
)

FEWER = 14
DAY = 86400.0
T0 = 1_000_000.0  # when the old rows were received
BEFORE = T0 + 30 * DAY  # the retention's cutoff


def _job_list(status: str) -> str:
    """The job list's query for one status, as both stores write it (`?` placeholders)."""
    terms = " AND ".join(["status = ?", *list_status_terms(status)])
    return f"SELECT id FROM jobs WHERE {terms} ORDER BY id DESC LIMIT ?"


class TestIndexes:
    """The time indexes of events and requests are gone; jobs_status holds no succeeded job,
    and PostgreSQL's token index no job without a token."""

    async def test_dropped_and_partial(self, store: Store, backend: str, store_url: str) -> None:
        names = await index_names(backend, store_url)
        assert set() == {"events_received", "requests_received"} & names
        if backend == "postgres":
            assert "jobs_token_hash" in names and "jobs_token_hash_key" not in names
            token = await index_definition(backend, store_url, "jobs_token_hash")
            assert token.endswith("WHERE (token_hash IS NOT NULL)"), token
        status = await index_definition(backend, store_url, "jobs_status")
        expected = "(status <> 'succeeded'::text)" if backend == "postgres" else NOT_SUCCEEDED
        assert status.endswith(f"WHERE {expected}"), status
        spend = await index_definition(backend, store_url, "jobs_spend_day")
        assert spend.endswith(f"({PRICED})" if backend == "postgres" else PRICED), spend

    def test_sqlite_queries_use_their_indexes(self, tmp_path: Path) -> None:
        from receiver.store.sqlite import (
            _COUNT_PRUNABLE,
            _PICK_EVENTS,
            _PRUNE_REQUESTS,
            _SPENT,
            _spend_query,
        )
        from receiver.store.sqlite import _prune_params as params

        with sqlite3.connect(tmp_path / "plans.db") as db:
            sqlite_migrated(db)

            def plan(sql: str, values: Any) -> str:
                return "\n".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", values))

            events = "SEARCH e USING INDEX sqlite_autoindex_events_1 (id<?)"
            for sql in (_PICK_EVENTS, _COUNT_PRUNABLE["events"], _COUNT_PRUNABLE["deliveries"]):
                assert events in plan(sql, params(sql, BEFORE, limit=200)), sql
            requests = "SEARCH r USING INDEX sqlite_autoindex_requests_1 (id<?)"
            for sql in (_PRUNE_REQUESTS, _COUNT_PRUNABLE["requests"]):
                assert requests in plan(sql, params(sql, BEFORE, limit=200)), sql
            failed = plan(_job_list("failed"), ("failed", 10))
            assert "USING COVERING INDEX jobs_status (status=?)" in failed
            succeeded = plan(_job_list("succeeded"), ("succeeded", 10))
            assert "SCAN jobs USING INDEX sqlite_autoindex_jobs_1" in succeeded
            assert "TEMP B-TREE" not in succeeded
            assert "jobs_status" in plan(JOB_COUNTS, ())
            spent = "SEARCH jobs USING COVERING INDEX jobs_spend_day (created_at>?)"
            assert spent in plan(_SPENT, (T0,))
            spend = plan(_spend_query("NULL"), (spend_bound(T0), T0))
            assert "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id>?)" in spend

    async def test_postgres_queries_use_their_indexes(self, pg_url: str) -> None:
        """With rows enough that the planner has a choice: a month of callbacks, one a minute."""
        import asyncpg

        from receiver.store.pg_batch import _LOCK_JOBS
        from receiver.store.postgres import (
            _COUNT_PRUNABLE,
            _PICK_EVENTS,
            _PRUNE_REQUESTS,
            _bind,
            pool_options,
        )
        from receiver.store.postgres import _SPENT as pg_spent
        from receiver.store.postgres import _spend_query as pg_spend_query

        connection = await asyncpg.connect(pool_options(pg_url)[0])
        try:
            await _fill(connection, [T0 + minute * 60 for minute in range(3000)])
            await connection.execute("SET plan_cache_mode = force_generic_plan")

            async def plan(sql: str, *values: Any) -> str:
                """The generic plan: for any parameter values, as a prepared statement gets
                after five runs. A partial index applies only where the query's own terms
                prove its predicate."""
                await connection.execute(f"PREPARE planned AS {sql}")
                given = f"({', '.join(_literal(value) for value in values)})" if values else ""
                try:
                    rows = await connection.fetch(f"EXPLAIN EXECUTE planned{given}")
                finally:
                    await connection.execute("DEALLOCATE planned")
                return "\n".join(row[0] for row in rows)

            cutoff = T0 + 300 * 60  # a tenth of the rows are past it
            for sql in (_PICK_EVENTS, _COUNT_PRUNABLE["events"]):
                assert "using events_id_key on events e" in await plan(*_bind(sql, cutoff, 200))
            for sql in (_PRUNE_REQUESTS, _COUNT_PRUNABLE["requests"]):
                assert "using requests_pkey on requests r" in await plan(*_bind(sql, cutoff, 200))
            numbered = _job_list("failed").replace("?", "$1", 1).replace("?", "$2")
            assert "using jobs_status" in await plan(numbered, "failed", 10)
            numbered = _job_list("succeeded").replace("?", "$1", 1).replace("?", "$2")
            assert "Index Scan Backward using jobs_pkey" in await plan(numbered, "succeeded", 10)
            assert "jobs_status" in await plan(JOB_COUNTS)
            assert "jobs_spend_day" in await plan(pg_spent, T0)
            month_end = T0 + 2700 * 60  # a tenth of the jobs were created since
            spend = await plan(pg_spend_query("NULL::text"), month_end, spend_bound(month_end))
            assert "Index Scan using jobs_pkey" in spend
            tokens = await plan(_LOCK_JOBS, [], ["token"], [], [])
            assert "Index Scan on jobs_token_hash" in tokens
            assert "Index Cond: (token_hash = ANY ($2))" in tokens
        finally:
            await connection.close()


def _literal(value: Any) -> str:
    """A parameter's value written into SQL (EXECUTE takes no parameters of its own)."""
    if isinstance(value, list):
        return f"ARRAY[{', '.join(_literal(item) for item in value)}]::text[]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return f"'{value}'::float8" if isinstance(value, float) else str(value)


async def _fill(connection: Any, times: list[float]) -> None:
    """A succeeded job (every tenth one failed) per time, with one callback's request and
    event, their ids minted then; then the planner's statistics."""
    rows = [(id_at("job", at), id_at("req", at), id_at("evt", at), at) for at in times]
    await connection.executemany(
        "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
        " VALUES ($1, 'apiframe', $2, $3, $3)",
        [
            (job, "failed" if n % 10 == 0 else "succeeded", at)
            for n, (job, _, _, at) in enumerate(rows)
        ],
    )
    await connection.executemany(
        "INSERT INTO requests (id, provider, received_at, method, path, query, headers, body)"
        " VALUES ($1, 'apiframe', $2, 'POST', '/hooks/apiframe', '', '{}', '')",
        [(request, at) for _, request, _, at in rows],
    )
    await connection.executemany(
        "INSERT INTO events (id, job_id, provider, status, raw_status, source, disposition,"
        " dedupe_key, received_at, request_id) VALUES"
        " ($1, $2, 'apiframe', 'succeeded', 's', 'callback', 'applied', $1, $3, $4)",
        [(event, job, at, request) for job, request, event, at in rows],
    )
    await connection.execute("ANALYZE")


class TestRetentionById:
    """Rows go by their received_at; the id only bounds the walk."""

    async def test_a_row_minted_after_its_time_stays_longer(self, store: Store) -> None:
        """An id minted past the cutoff is beyond the walk: that row is kept, never the
        other way round (a row received after the cutoff is not pruned for an old id)."""
        old = raw(T0)
        minted_late = msgspec.structs.replace(raw(BEFORE + DAY), received_at=T0)
        received_late = msgspec.structs.replace(raw(T0), received_at=BEFORE + DAY)
        for request in (old, minted_late, received_late):
            await store.record_nudge("job_unknown", request, poll_at=T0)
        report = await prune_all(store, before=BEFORE)
        assert 1 == report.counts["requests"]
        kept = {r.id for r in await store.list_requests("job_unknown")}
        assert {minted_late.id, received_late.id} == kept


class TestJobsByStatus:
    """The job list and the counts by status read the same with succeeded jobs walked by id."""

    async def test_listed_and_counted(self, store: Store) -> None:
        statuses = [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED, Status.QUEUED]
        statuses += [Status.RUNNING, Status.CANCELLED, Status.SUCCEEDED]
        for n, status in enumerate(statuses):
            await add_job(store, f"job_{n}", task_id=f"task-{n}", status=status)
        for status in Status:
            expected = [f"job_{n}" for n in reversed(range(len(statuses))) if statuses[n] == status]
            page = await store.list_jobs(status=status, limit=2)
            assert expected[:2] == [job.id for job in page.items], status
        expected_counts = {status.value: statuses.count(status) for status in Status}
        assert expected_counts == await store.job_counts()


class TestSpend:
    """A budget's sum adds priced jobs; the spend report counts unpriced ones too."""

    async def test_priced_and_unpriced(self, store: Store) -> None:
        since = T0 + DAY
        await add_job(store, id_at("job", T0), task_id="t-old", at=T0, estimated_cost=5.0)
        await add_job(store, id_at("job", since), task_id="t-free", at=since)
        await add_job(store, id_at("job", since + 1), task_id="t-paid", at=since + 1, cost=2.0)
        [row] = await store.spend(since=since)
        assert (2, 2.0) == (row.jobs, row.cost)
        assert [1, 2] == [row.jobs for row in await store.spend(since=0)]
        assert [] == await store.spend(since=math.inf)  # GET /costs takes any number


# A database as the receiver left it before 0014: an ended job and an open one, each with
# a callback's request and event received long ago, ids minted then.
def _old_statements() -> list[tuple[str, tuple[Any, ...]]]:
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for job, status in (("job_ended", "failed"), ("job_open", "running")):
        request, event = id_at("req", T0), id_at("evt", T0)
        statements += [
            (
                "INSERT INTO jobs (id, provider, task_id, status, created_at, updated_at)"
                " VALUES (?, 'apiframe', ?, ?, ?, ?)",
                (job, f"task-{job}", status, T0, T0),
            ),
            (
                "INSERT INTO requests (id, provider, received_at, method, path, query, headers,"
                " body) VALUES (?, 'apiframe', ?, 'POST', '/hooks/apiframe', '', '{}', ?)",
                (request, T0, b"{}"),
            ),
            (
                "INSERT INTO events (id, job_id, provider, task_id, status, raw_status, source,"
                " disposition, dedupe_key, received_at, request_id) VALUES"
                " (?, ?, 'apiframe', ?, ?, 'r', 'callback', 'applied', ?, ?, ?)",
                (event, job, f"task-{job}", status, event, T0, request),
            ),
        ]
    return statements


class TestMigration0014:
    """A database filled before 0014 is pruned, listed and counted as before."""

    async def _check(self, store: Store) -> None:
        assert ["job_ended"] == [job.id for job in (await store.list_jobs(status="failed")).items]
        counts = await store.job_counts()
        assert (1, 1, 0) == (counts["failed"], counts["running"], counts["succeeded"])
        report = await prune_all(store, before=BEFORE)
        assert (1, 1) == (report.counts["events"], report.counts["requests"])
        assert 1 == len(await store.list_events("job_open"))

    async def test_sqlite(self, tmp_path: Path) -> None:
        old = carried_forward("sqlite", str(tmp_path / "old.db"), FEWER, _old_statements())
        async with old as (store, _url):
            await self._check(store)

    async def test_postgres(self, pg_database: str) -> None:
        old = carried_forward("postgres", pg_database, FEWER, _old_statements())
        async with old as (store, _url):
            await self._check(store)
