"""A callback's body is stored once: in its request row, not again as its event's payload.

Both backends, through the `store` fixture; and migration 0011, which moves the payloads
of a database made before it out of its events, on both backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from old_schema import carried_forward, query
from test_store import T0, add_job, make_raw, record, route_to

from receiver.models import Disposition, Status, Update
from receiver.store import Store, Write

LEAN = 11  # the migration that moved payloads out of events


async def stored_payload(backend: str, url: str, event_id: str) -> tuple[Any, Any]:
    """The event row's own (payload, payload_from) columns, as stored."""
    sql = "SELECT payload, payload_from FROM events WHERE id = ?"
    rows = await query(backend, url, sql, (event_id,))
    payload, where = rows[0]
    return payload, where


class TestBodyStoredOnce:
    """An event's payload found in its request's body is read from there, not kept twice."""

    async def test_a_payload_that_is_the_body(
        self, store: Store, backend: str, store_url: str
    ) -> None:
        body = b'{"task_id": "task-1", "status": "running", "percentage": 1.5, "x": [1, "a"]}'
        payload = msgspec.json.decode(body)
        await add_job(store)
        update = Update(status=Status.RUNNING, raw_status="running", payload=payload)
        recorded = await record(store, update, raw=make_raw(body=body), route=route_to("h"))
        assert (None, "") == await stored_payload(backend, store_url, recorded.event.id)
        [event] = await store.list_events("job_1")
        assert payload == event.payload
        [claimed] = await store.claim_deliveries(limit=5, lease=30, at=T0 + 5)
        assert payload == claimed.event.payload

    async def test_a_payload_that_is_a_member_of_the_body(
        self, store: Store, backend: str, store_url: str
    ) -> None:
        body = b'{"code": 0, "data": {"task_id": "task-1", "progress": "40%"}}'
        payload = msgspec.json.decode(body)["data"]
        await add_job(store)
        update = Update(status=Status.RUNNING, raw_status="running", payload=payload)
        recorded = await record(store, update, raw=make_raw(body=body))
        assert (None, "data") == await stored_payload(backend, store_url, recorded.event.id)
        [event] = await store.list_events("job_1")
        assert payload == event.payload

    @pytest.mark.parametrize(
        "body",
        [b'{"status": "running", "extra": 1}', b"not json", b"[1, 2]", b'{"data": 1}'],
        ids=["other-object", "not-json", "not-an-object", "member-not-an-object"],
    )
    async def test_a_payload_not_in_the_body_is_kept(
        self, store: Store, backend: str, store_url: str, body: bytes
    ) -> None:
        payload = {"status": "running"}
        await add_job(store)
        update = Update(status=Status.RUNNING, raw_status="running", payload=payload)
        recorded = await record(store, update, raw=make_raw(body=body))
        kept, where = await stored_payload(backend, store_url, recorded.event.id)
        assert ('{"status":"running"}', None) == (kept, where)
        [event] = await store.list_events("job_1")
        assert payload == event.payload

    async def test_an_event_without_a_request_keeps_its_payload(
        self, store: Store, backend: str, store_url: str
    ) -> None:
        await add_job(store)
        update = Update(status=Status.RUNNING, raw_status="running", payload={"polled": True})
        recorded = await store.record(
            Write(update=update, source="poll", job_id="job_1", at=T0), route=route_to("h")
        )
        assert ('{"polled":true}', None) == await stored_payload(
            backend, store_url, recorded.event.id
        )
        [event] = await store.list_events("job_1")
        assert {"polled": True} == event.payload

    async def test_no_payload_stays_none(self, store: Store) -> None:
        await add_job(store)
        await record(store, Update(status=Status.RUNNING, raw_status="r"), raw=make_raw())
        [event] = await store.list_events("job_1")
        assert event.payload is None


# Rows as the receiver wrote them before migration 0011: the payload in the event too.
WHOLE = b'{"task_id": "task-1", "status": "running", "percentage": 40}'
MEMBER = b'{"code":0,"data":{"task_id":"task-1","status":"ok","n":2}}'
OTHER = b'{"status": "x"}'
OLD_ROWS = [
    # (event id, request body or None, payload as stored, moved by the migration)
    ("evt_1", WHOLE, {"task_id": "task-1", "status": "running", "percentage": 40}, ""),
    ("evt_2", MEMBER, {"task_id": "task-1", "status": "ok", "n": 2}, "data"),
    ("evt_3", OTHER, {"status": "y"}, None),
    ("evt_4", None, {"polled": 1}, None),
    ("evt_5", b"not json", {"a": 1}, None),
    ("evt_6", OTHER, None, None),
]
# How the receiver keyed a callback at 40% before 0011, which keeps digests instead.
OLD_KEY = "apiframe:task-1:running:0.4000"
_JOB = (
    "INSERT INTO jobs (id, provider, task_id, status, created_at, updated_at)"
    " VALUES ('job_1', 'apiframe', 'task-1', 'running', 1, 1)"
)
_REQUEST = (
    "INSERT INTO requests (id, job_id, provider, received_at, method, path, query, headers, body)"
    " VALUES (?, 'job_1', 'apiframe', 1, 'POST', '/hooks/apiframe', '', '{}', ?)"
)
_EVENT = (
    "INSERT INTO events (id, job_id, provider, task_id, status, raw_status, source,"
    " disposition, dedupe_key, received_at, request_id, payload)"
    " VALUES (?, 'job_1', 'apiframe', 'task-1', 'running', 'r', 'callback', 'applied', ?, ?, ?, ?)"
)


def _old_statements() -> list[tuple[str, tuple[Any, ...]]]:
    statements: list[tuple[str, tuple[Any, ...]]] = [(_JOB, ())]
    for n, (event_id, body, payload, _) in enumerate(OLD_ROWS):
        request_id = None if body is None else f"req_{n}"
        if body is not None:
            statements.append((_REQUEST, (request_id, body)))
        text = None if payload is None else msgspec.json.encode(payload).decode()
        key = OLD_KEY if n == 0 else f"k{n}"
        statements.append((_EVENT, (event_id, key, float(n), request_id, text)))
    return statements


class TestMigration0011:
    """A database filled before 0011 reads the same payloads after it, each body kept once."""

    async def _check(self, store: Store, backend: str, url: str) -> None:
        events = {event.id: event for event in await store.list_events("job_1")}
        assert {row[0]: row[2] for row in OLD_ROWS} == {
            event_id: event.payload for event_id, event in events.items()
        }
        for event_id, _, payload, moved in OLD_ROWS:
            kept, where = await stored_payload(backend, url, event_id)
            assert where == moved, event_id
            assert (kept is None) == (moved is not None or payload is None), event_id
        # The same callback again is still a duplicate of the one stored before 0011.
        again = Update(status=Status.RUNNING, raw_status="running", progress=0.4)
        recorded = await store.record(
            Write(update=again, source="callback", job_id="job_1"), route=route_to("h")
        )
        assert Disposition.DUPLICATE == recorded.event.disposition
        assert not recorded.deliveries

    async def test_sqlite(self, tmp_path: Path) -> None:
        old = carried_forward("sqlite", str(tmp_path / "old.db"), LEAN, _old_statements())
        async with old as (store, url):
            await self._check(store, "sqlite", url)

    async def test_postgres(self, pg_database: str) -> None:
        old = carried_forward("postgres", pg_database, LEAN, _old_statements())
        async with old as (store, url):
            await self._check(store, "postgres", url)


class TestFinishedDeliveries:
    """A delivery's worker stamp goes with its lease: a finished row keeps none."""

    async def test_done_row_has_no_worker(self, store: Store, backend: str, store_url: str) -> None:
        from receiver.models import DeliveryState
        from receiver.store.base import Worker

        worker = await store.register_worker(
            Worker(id="wrk_1", host="here", pid=1, pid_scope="", timeout=15.0)
        )
        await add_job(store)
        await record(store, Update(status=Status.RUNNING, raw_status="r"), raw=make_raw())
        [claimed] = await store.claim_deliveries(limit=1, lease=30, at=T0 + 5, worker=worker.id)
        sql = "SELECT worker_id FROM deliveries WHERE id = ?"
        assert [("wrk_1",)] == await query(backend, store_url, sql, (claimed.delivery.id,))
        await store.set_delivery_state(
            claimed.delivery.id,
            DeliveryState.DONE,
            error=None,
            next_attempt_at=None,
            at=T0 + 6,
            attempt=claimed.delivery.attempts,
        )
        assert [(None,)] == await query(backend, store_url, sql, (claimed.delivery.id,))
        [listed] = await store.list_deliveries(job_id="job_1")
        assert DeliveryState.DONE == listed.state
