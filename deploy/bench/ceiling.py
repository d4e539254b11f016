"""What the contract alone costs: the rows DESIGN.md asks for, written by a bare ASGI probe.

    python deploy/bench/ceiling.py serve PORT sqlite:///PATH
    receiver bench --url http://127.0.0.1:PORT --database-url sqlite:///PATH --no-webhook
    python deploy/bench/ceiling.py sql [BATCHES]

Not the receiver: a throwaway upper bound for it. Each POST /hooks/apiframe is checked
(the static secret, in constant time), decoded, and committed with group commit on the
receiver's own schema and pragmas: its raw request, its job (looked up first), its event
and one delivery, answered 200 only after its batch's COMMIT. A second pass marks each
delivery done, as a no-op handler's run would. Left out, so the gap to the receiver
is ours to explain: the state machine and dedupe, redaction, rate limits, metrics, logs,
handler dispatch, retries, and every refusal (a refusal here is a bare 401 or 400).

`sql` runs the same statements with no HTTP and no event loop, in batches of 50
callbacks, and prints the CPU each kind of statement costs per callback: the part of a
callback's cost that no Python above SQLite can remove.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import msgspec

from receiver.asgi import Receive, Scope, Send

SECRET = os.environ.get("SECRET", "bench-secret").encode()
_DECODE = msgspec.json.Decoder(dict[str, Any]).decode
_OK = [(b"content-type", b"application/json"), (b"content-length", b"11")]


def _id(prefix: str) -> str:
    from receiver.models import new_id  # sortable ids, as the receiver's rows have

    return new_id(prefix)


class Probe:
    def __init__(self, path: str):
        self.path = path
        self.queue: list[tuple[dict[str, Any], bytes, asyncio.Future[None]]] = []
        self.done: list[str] = []  # deliveries whose no-op "handler" has run
        self.flusher: asyncio.Task[None] | None = None

    def open(self) -> None:
        from receiver.store.sqlite import SQLiteStore

        async def migrate() -> None:  # the receiver's own schema, made the receiver's way
            store = SQLiteStore(f"sqlite:///{self.path}")
            await store.open()
            await store.close()

        asyncio.run(migrate())
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON"):
            self.db.execute(f"PRAGMA {pragma}")

    async def record(self, update: dict[str, Any], body: bytes) -> None:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((update, body, future))
        if self.flusher is None:
            self.flusher = asyncio.create_task(self.flush())
        await future

    async def flush(self) -> None:
        try:
            while self.queue or self.done:
                batch, self.queue = self.queue, []
                finished, self.done = self.done, []
                await asyncio.to_thread(self.db.execute, "BEGIN IMMEDIATE")
                written = self.write_batch(finished, [(u, b) for u, b, _ in batch])
                await asyncio.to_thread(self.db.execute, "COMMIT")
                self.done.extend(written)  # the no-op handler has "run"
                for _, _, future in batch:
                    future.set_result(None)
        finally:
            self.flusher = None

    def write_batch(
        self, finished: list[str], callbacks: list[tuple[dict[str, Any], bytes]]
    ) -> list[str]:
        """Inside a transaction: mark `finished` deliveries done, write `callbacks`."""
        at = time.time()
        for delivery in finished:
            self.db.execute(
                "UPDATE deliveries SET state = 'done', updated_at = ? WHERE id = ?",
                (at, delivery),
            )
        return [self.write(update, body, at) for update, body in callbacks]

    def write(self, update: dict[str, Any], body: bytes, at: float) -> str:
        task_id = str(update["task_id"])
        found = self.db.execute(
            "SELECT id FROM jobs WHERE provider = 'apiframe' AND task_id = ?", (task_id,)
        ).fetchone()
        job = found[0] if found else _id("job")
        request, event, delivery = _id("req"), _id("evt"), _id("dlv")
        if not found:
            self.db.execute(
                "INSERT INTO jobs (id, provider, task_id, status, raw_status, progress, result_url,"
                " created_at, updated_at) VALUES (?, 'apiframe', ?, ?, ?, 1.0, ?, ?, ?)",
                (job, task_id, "succeeded", update.get("status"), update.get("video_url"), at, at),
            )
        self.db.execute(
            "INSERT INTO requests (id, job_id, provider, received_at, method, path, query,"
            " headers, body, client)"
            " VALUES (?, ?, 'apiframe', ?, 'POST', '/hooks/apiframe', '', '{}', ?, '127.0.0.1')",
            (request, job, at, body),
        )
        self.db.execute(
            "INSERT INTO events (id, job_id, provider, task_id, status, raw_status, progress,"
            " result_url, source, disposition, dedupe_key, received_at, request_id, payload)"
            " VALUES (?, ?, 'apiframe', ?, 'succeeded', ?, 1.0, ?, 'callback', 'applied', ?, ?,"
            " ?, ?)",
            (
                event,
                job,
                task_id,
                update.get("status"),
                update.get("video_url"),
                task_id,
                at,
                request,
                body.decode(),
            ),
        )
        self.db.execute(
            "INSERT INTO deliveries (id, event_id, job_id, handler, state, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, 'noop', 'running', 1,"
            " ?, ?, ?)",
            (delivery, event, job, at, at, at),
        )
        return delivery

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status = 200
        if scope["method"] == "POST":
            secret = dict(scope["headers"]).get(b"x-webhook-secret", b"")
            body = b"".join(chunks)
            if not hmac.compare_digest(secret, SECRET):
                status = 401
            else:
                try:
                    update = _DECODE(body)
                except msgspec.DecodeError:
                    status = 400
                else:
                    await self.record(update, body)
        await send({"type": "http.response.start", "status": status, "headers": _OK})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})


class _TimedConnection:
    """A sqlite3 connection that adds up the CPU each kind of statement takes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.cpu_ns: Counter[str] = Counter()

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        started = time.process_time_ns()
        rows = self.db.execute(sql, params).fetchall()  # a SELECT works until it is read
        self.cpu_ns[" ".join(sql.split()[:3])] += time.process_time_ns() - started
        return _Rows(rows)


class _Rows:
    def __init__(self, rows: list[Any]):
        self.rows = rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


def sql_costs(batches: int, size: int = 50) -> None:
    with tempfile.TemporaryDirectory() as directory:
        probe = Probe(os.path.join(directory, "ceiling.db"))
        probe.open()
        timed = _TimedConnection(probe.db)
        probe.db = timed  # type: ignore[assignment]
        body = b'{"task_id":"t","status":"finished","video_url":"https://cdn.example/t.mp4"}'
        finished: list[str] = []
        started, cpu = time.perf_counter(), time.process_time()
        for batch in range(batches):
            timed.execute("BEGIN IMMEDIATE")
            callbacks = [
                ({"task_id": f"t-{batch}-{n}", "status": "finished"}, body) for n in range(size)
            ]
            finished = probe.write_batch(finished, callbacks)
            timed.execute("COMMIT")
        count = batches * size
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"{count} callbacks in batches of {size}: {count / elapsed:,.0f}/s,"
        f" {cpu / count * 1e6:.0f} µs of CPU each, statements included:"
    )
    for kind, spent in timed.cpu_ns.most_common():
        print(f"  {kind:<24} {spent / count / 1000:6.1f} µs per callback")


def main() -> None:
    if sys.argv[1:2] == ["sql"]:
        sql_costs(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        return
    import uvicorn

    from receiver.cli.serve import UVICORN_OPTIONS

    probe = Probe(sys.argv[3].removeprefix("sqlite:///"))
    probe.open()
    uvicorn.run(
        probe, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", **UVICORN_OPTIONS
    )


if __name__ == "__main__":
    main()
