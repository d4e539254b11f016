"""deploy/bench/ceiling.py: the contract's rows, written by a bare probe the receiver can read."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from receiver.bench.load import callback_body
from receiver.bench.servers import Server, free_port
from receiver.models import Status
from receiver.store import SQLiteStore

CEILING = Path(__file__).resolve().parent.parent / "deploy" / "bench" / "ceiling.py"


def test_sql_mode_prints_each_statement_cost() -> None:
    """`sql` writes its batches and names the cost of every kind of statement it ran."""
    done = subprocess.run(
        [sys.executable, str(CEILING), "sql", "3"], capture_output=True, text=True, timeout=60
    )
    assert 0 == done.returncode, done.stderr
    assert done.stdout.startswith("150 callbacks in batches of 50: ")
    for kind in (
        "INSERT INTO jobs",
        "INSERT INTO requests",
        "INSERT INTO events",
        "INSERT INTO deliveries",
        "UPDATE deliveries SET",
        "SELECT id FROM",
        "COMMIT",
    ):
        assert kind in done.stdout


async def test_served_probe_writes_rows_the_receiver_reads(tmp_path: Path) -> None:
    """A callback the probe acknowledges is a job, event and finished delivery in our schema.

    `receiver bench --url` checks the probe's store with the receiver's own reads, so the
    probe must keep up with the schema: this fails when a migration leaves it behind.
    """
    database = tmp_path / "ceiling.db"
    port = free_port()
    with (tmp_path / "ceiling.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(CEILING), "serve", str(port), f"sqlite:///{database}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    probe = b"GET /healthz HTTP/1.1\r\nHost: ceiling\r\n\r\n"
    server = Server("ceiling", process, port, probe, time.perf_counter())
    try:
        await asyncio.to_thread(server.ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            secret = {"x-webhook-secret": "bench-secret"}
            accepted = await http.post(
                "/hooks/apiframe", content=callback_body("t-1"), headers=secret
            )
            refused = await http.post(
                "/hooks/apiframe", content=callback_body("t-2"), headers={"x-webhook-secret": "x"}
            )
            # The delivery's "run" is committed by the next flush, which the next write starts.
            await http.post("/hooks/apiframe", content=callback_body("t-3"), headers=secret)
    finally:
        server.stop()
    assert (200, 401) == (accepted.status_code, refused.status_code)

    store = SQLiteStore(f"sqlite:///{database}")
    await store.open()
    try:
        job = await store.job_by_task("apiframe", "t-1")
        assert job is not None
        events = await store.list_events(job.id)
        assert None is await store.job_by_task("apiframe", "t-2")
    finally:
        await store.close()
    assert [Status.SUCCEEDED] == [event.status for event in events]
    with sqlite3.connect(database) as db:
        states = db.execute("SELECT state FROM deliveries WHERE job_id = ?", (job.id,)).fetchall()
    assert [("done",)] == states
