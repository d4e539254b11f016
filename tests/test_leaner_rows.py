"""Migration 0012: indexes that no query needs are gone, the ones left still serve their
queries, a callback's request row leaves its job id to its event, and our answers live in
a table of their own. Both backends.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from old_schema import (
    carried_forward,
    index_definition,
    index_names,
    query,
    sqlite_migrated,
)
from test_store import T0, add_job, make_raw, record

from receiver.models import Status, Update
from receiver.store import Store
from receiver.store.base import AnswerNote

LEANER = 12


async def _request_jobs(backend: str, url: str) -> dict[str, Any]:
    rows = await query(backend, url, "SELECT id, job_id FROM requests")
    return dict(rows)


class TestIndexes:
    """Indexes no query needs are gone; finished deliveries leave the claims' index."""

    async def test_dropped_and_added(self, store: Store, backend: str, store_url: str) -> None:
        for partial in ("jobs_idempotency_key", "requests_job"):
            sql = await index_definition(backend, store_url, partial)
            assert sql.endswith("IS NOT NULL)" if backend == "postgres" else "IS NOT NULL"), sql
        names = await index_names(backend, store_url)
        assert {"deliveries_dead", "deliveries_unfinished", "requests_job"} <= names
        if backend == "postgres":
            assert set() == {"deliveries_open", "deliveries_due", "events_pkey"} & names
            return
        sql = "SELECT sql FROM sqlite_master WHERE name = 'deliveries_due'"
        [(due,)] = await query(backend, store_url, sql)
        assert due.endswith("WHERE state = 'pending' OR state = 'running'")

    def test_sqlite_claims_and_dead_letters_use_their_partial_indexes(self, tmp_path: Path) -> None:
        from receiver.models import DeliveryState
        from receiver.store.sqlite import _DUE_PENDING, _JOB_REQUESTS, _LAPSED, _in_states

        path = tmp_path / "plans.db"
        with sqlite3.connect(path) as db:
            sqlite_migrated(db)

            def plan(sql: str, params: tuple[Any, ...]) -> str:
                rows = db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
                return "\n".join(row[-1] for row in rows)

            assert "USING INDEX deliveries_due" in plan(_DUE_PENDING, (T0, 10))
            assert "USING INDEX deliveries_due" in plan(_LAPSED, (T0, 10))
            dead = f"SELECT id FROM deliveries WHERE {_in_states([DeliveryState.DEAD])}"
            assert "USING INDEX deliveries_dead" in plan(dead + " ORDER BY seq LIMIT 5", ())
            requests = plan(_JOB_REQUESTS, ("job_1",))
            assert "USING INDEX requests_job" in requests
            assert "USING INDEX events_dedupe" in requests
            assert "SCAN r" not in requests and "SCAN e" not in requests

    async def test_postgres_queries_use_their_indexes(self, pg_url: str) -> None:
        import asyncpg

        from receiver.store.postgres import (
            _CLAIM_DELIVERIES,
            _JOB_REQUESTS,
            _PRUNE_REQUESTS,
            _bind,
            pool_options,
        )

        connection = await asyncpg.connect(pool_options(pg_url)[0])
        try:
            await connection.execute("SET enable_seqscan = off")
            claim = "\n".join(
                row[0]
                for row in await connection.fetch(
                    f"EXPLAIN {_CLAIM_DELIVERIES}", T0 + 30, T0, 10, None, [], []
                )
            )
            assert "deliveries_unfinished" in claim
            requests = "\n".join(
                row[0] for row in await connection.fetch(f"EXPLAIN {_JOB_REQUESTS}", "job_1")
            )
            assert "requests_job" in requests and "events_dedupe" in requests
            sql, *params = _bind(_PRUNE_REQUESTS, T0, 200)
            prune = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *params))
            assert "events_request" in prune
        finally:
            await connection.close()

    async def test_postgres_ids_compare_in_one_collation(self, pg_url: str) -> None:
        """A job's events are found by their index from the job's id (0013_id_collation):
        with events.job_id in the default collation and jobs.id in "C", the retention of
        ended jobs read every entry of events_dedupe for each job."""
        import asyncpg

        from receiver.store.postgres import _PRUNE_JOBS, _bind, pool_options

        connection = await asyncpg.connect(pool_options(pg_url)[0])
        try:
            others = await connection.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND data_type = 'text'"
                " AND (column_name = 'id' OR column_name LIKE '%\\_id' ESCAPE '\\')"
                " AND column_name <> 'task_id' AND collation_name IS DISTINCT FROM 'C'"
            )
            assert [tuple(row) for row in others] == []
            await connection.execute("SET enable_seqscan = off")
            sql, *params = _bind(_PRUNE_JOBS, T0, 200)
            prune = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *params))
            assert "Index Cond: (job_id = j.id)" in prune
        finally:
            await connection.close()


class TestRequestsOfAJob:
    """A callback's request finds its job through its event; a nudge names its own."""

    async def test_listed_with_their_job(self, store: Store, backend: str, store_url: str) -> None:
        await add_job(store)
        await record(store, Update(status=Status.RUNNING, raw_status="r"), raw=make_raw("req_1"))
        await store.record_nudge("job_1", make_raw("req_2"), poll_at=T0 + 5)
        assert {"req_1": None, "req_2": "job_1"} == await _request_jobs(backend, store_url)
        assert ["req_1", "req_2"] == [raw.id for raw in await store.list_requests("job_1")]
        assert [] == await store.list_requests("job_2")

    async def test_answers_read_back_and_unknown_ones_dropped(
        self, store: Store, backend: str, store_url: str
    ) -> None:
        await add_job(store)
        await record(store, Update(status=Status.RUNNING, raw_status="r"), raw=make_raw("req_1"))
        await store.save_answers([AnswerNote("req_1", 200, 2.5), AnswerNote("req_gone", 200, 1.0)])
        await store.save_answers([AnswerNote("req_1", 202, 3.5)])
        [raw] = await store.list_requests("job_1")
        assert (202, 3.5) == (raw.answer_status, raw.answer_ms)
        rows = await query(backend, store_url, "SELECT request_id, status, ms FROM answers")
        assert [("req_1", 202, 3.5)] == rows


# A database as the receiver left it before 0012: a callback's request names its job, a
# nudge's too, and the answers sit in the request rows.
_OLD = [
    "INSERT INTO jobs (id, provider, task_id, status, created_at, updated_at)"
    " VALUES ('job_1', 'apiframe', 'task-1', 'running', 1, 1)",
    "INSERT INTO requests (id, job_id, provider, received_at, method, path, query, headers,"
    " body, answer_status, answer_ms) VALUES"
    " ('req_1', 'job_1', 'apiframe', 1, 'POST', '/hooks/apiframe', '', '{}', ?, 200, 1.5),"
    " ('req_2', 'job_1', 'apiframe', 2, 'GET', '/hooks/apiframe', 'uuid=x', '{}', ?, NULL, NULL)",
    "INSERT INTO events (id, job_id, provider, task_id, status, raw_status, source,"
    " disposition, dedupe_key, received_at, request_id)"
    " VALUES ('evt_1', 'job_1', 'apiframe', 'task-1', 'running', 'r', 'callback', 'applied',"
    " 'k', 1, 'req_1')",
]


def _old_statements() -> list[tuple[str, tuple[Any, ...]]]:
    bodies = (b"{}", b"")  # the two requests' bodies
    return [(sql, bodies if sql.startswith("INSERT INTO requests") else ()) for sql in _OLD]


class TestMigration0012:
    """A database filled before 0012 lists the same requests, with the same answers."""

    async def _check(self, store: Store, backend: str, url: str) -> None:
        listed = await store.list_requests("job_1")
        assert [("req_1", 200, 1.5), ("req_2", None, None)] == [
            (raw.id, raw.answer_status, raw.answer_ms) for raw in listed
        ]
        assert {"req_1": None, "req_2": "job_1"} == await _request_jobs(backend, url)

    async def test_sqlite(self, tmp_path: Path) -> None:
        old = carried_forward("sqlite", str(tmp_path / "old.db"), LEANER, _old_statements())
        async with old as (store, url):
            await self._check(store, "sqlite", url)

    async def test_postgres(self, pg_database: str) -> None:
        old = carried_forward("postgres", pg_database, LEANER, _old_statements())
        async with old as (store, url):
            await self._check(store, "postgres", url)
