"""Migration 0015 (PostgreSQL): the dispatcher finds due deliveries by walking
deliveries_pending and deliveries_leased in due order, so the dead entries finished
deliveries leave in the partial indexes until VACUUM are read once, not on every call;
and a pooled connection given back costs no reset round trip.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from old_schema import index_definition, index_names

from receiver.store.postgres import (
    _CLAIM_DELIVERIES,
    _NEXT_DUE,
    PostgresStore,
    pool_options,
)

T0 = 1_000_000.0
JOBS = 100
FINISHED = 3000  # deliveries that went pending -> running -> done before the test looks


@pytest.fixture
async def connection(pg_url: str) -> AsyncIterator[Any]:
    import asyncpg

    opened = await asyncpg.connect(pool_options(pg_url)[0])
    try:
        yield opened
    finally:
        await opened.close()


async def _finished_deliveries(connection: Any, count: int) -> None:
    """`count` events of a hundred jobs, each with a delivery that was pending, then
    claimed, then done: what a busy hour leaves in the partial indexes. Autovacuum is off
    for the table, as it is between two of its runs."""
    await connection.execute("ALTER TABLE deliveries SET (autovacuum_enabled = off)")
    await connection.executemany(
        "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
        " VALUES ($1, 'apiframe', 'running', $2, $2)",
        [(f"job_{n:03d}", T0) for n in range(JOBS)],
    )
    await connection.executemany(
        "INSERT INTO events (id, job_id, provider, status, raw_status, source, disposition,"
        " dedupe_key, received_at) VALUES ($1, $2, 'apiframe', 'running', 'r',"
        " 'callback', 'applied', $1, $3)",
        [(f"evt_{n:05d}", f"job_{n % JOBS:03d}", T0 + n) for n in range(count)],
    )
    await connection.executemany(
        "INSERT INTO deliveries (id, event_id, job_id, handler, state, next_attempt_at,"
        " created_at, updated_at) VALUES ($1, $2, $3, 'h', 'pending', $4, $4, $4)",
        [(f"dlv_{n:05d}", f"evt_{n:05d}", f"job_{n % JOBS:03d}", T0 + n) for n in range(count)],
    )
    await connection.execute(
        "UPDATE deliveries SET state = 'running', attempts = 1, lease_until = next_attempt_at"
        " + 330, worker_id = 'wrk_1'"
    )
    # The statistics are of a busy moment, every delivery running (autoanalyze's view
    # under load): they make a bitmap scan look cheap for "every running delivery".
    await connection.execute("ANALYZE deliveries")
    await connection.execute("UPDATE deliveries SET state = 'done', lease_until = NULL")


async def _blocks(connection: Any, sql: str, *args: Any) -> tuple[int, dict[str, Any]]:
    """The buffers one run of `sql` touched, and its plan."""
    [(document,)] = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    plan: dict[str, Any] = (json.loads(document) if isinstance(document, str) else document)[0]
    return plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"], plan["Plan"]


class TestIndexes:
    async def test_due_indexes_replace_the_worker_index(self, pg_url: str) -> None:
        names = await index_names("postgres", pg_url)
        assert {"deliveries_pending", "deliveries_leased"} <= names
        assert "deliveries_worker" not in names
        pending = await index_definition("postgres", pg_url, "deliveries_pending")
        assert pending.endswith("(next_attempt_at, seq) WHERE (state = 'pending'::text)")
        leased = await index_definition("postgres", pg_url, "deliveries_leased")
        assert leased.endswith("(lease_until, seq) WHERE (state = 'running'::text)")


class TestDeadEntries:
    async def test_next_due_reads_finished_deliveries_once(self, connection: Any) -> None:
        """The first call after the backlog walks past every dead entry; the second skips
        them without reading the table. Before 0015 each call read the whole table (a
        sequential scan here; a bitmap scan of every entry on a bigger one)."""
        await _finished_deliveries(connection, FINISHED)
        first, plan = await _blocks(connection, _NEXT_DUE)
        second, _ = await _blocks(connection, _NEXT_DUE)
        assert _walks_indexes(plan), plan
        # The table is over 70 pages; the indexes' marked entries fit in a few.
        assert second < 60 < first, (first, second)
        assert None is (await connection.fetchrow(_NEXT_DUE))[0]

    async def test_claims_walk_the_due_indexes(self, connection: Any) -> None:
        await _finished_deliveries(connection, FINISHED)
        _, claim = await _blocks(connection, _CLAIM_DELIVERIES, T0 + 400, T0 + 70, 64, None, [], [])
        text = json.dumps(claim)
        assert "deliveries_pending" in text and "deliveries_leased" in text, text
        assert _walks_indexes(claim), text


def _walks_indexes(plan: dict[str, Any]) -> bool:
    """Whether every read of deliveries in the plan is an index scan (which marks the dead
    entries it passes), not a bitmap or sequential scan."""
    nodes, kinds = [plan], set()
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        if node.get("Relation Name") == "deliveries" and node["Node Type"] != "ModifyTable":
            kinds.add(node["Node Type"])
    return bool(kinds) and kinds <= {"Index Scan", "Index Only Scan"}


class TestPooledConnections:
    async def test_a_connection_given_back_is_not_reset(self, pg_url: str, connection: Any) -> None:
        """The last statement a pooled connection ran is still its own once it is back
        in the pool: no `RESET ALL` round trip followed it."""
        store = PostgresStore(pg_url)
        await store.open()
        try:
            async with store._connection() as pooled:
                pid = await pooled.fetchval("SELECT pg_backend_pid() AS mine")
            last = await connection.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", pid
            )
            assert "SELECT pg_backend_pid() AS mine" == last
        finally:
            await store.close()

    async def test_a_transaction_left_open_is_rolled_back(self, pg_url: str) -> None:
        """What a reset is for: an acquirer never gets a connection inside another's
        transaction."""
        one = "&" if "?" in pg_url else "?"
        store = PostgresStore(f"{pg_url}{one}pool_size=1")
        await store.open()
        try:
            async with store._connection() as pooled:
                await pooled.execute("BEGIN")
                await pooled.execute("CREATE TABLE left_open (n int)")
            async with store._connection() as again:
                assert not again.is_in_transaction()
                assert None is await again.fetchval("SELECT to_regclass('left_open')")
        finally:
            await store.close()
