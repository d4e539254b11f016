"""Refusals on the hook routes: every 4xx costs its caller, and what is kept of it is capped."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.callbacks import HEADERS_BYTES, Reject, capped, kept_headers
from receiver.models import Job, RawRequest, Status, new_id, now
from receiver.refusals import PROVEN_BODY_BYTES, UNPROVEN_BODY_BYTES, Quarantine, quarantined
from receiver.store import NewJob, SQLiteStore
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import REDACTED, digest

TOKEN = "tok-" + "q" * 40
RUNNING = {"task_id": "t-1", "status": "1"}
PAD = "x" * 64 * 1024  # a header far over the caps
# The caps (receiver.callbacks, receiver.refusals), each with room for the marker that says
# how much was cut; a row of the quarantine holds at most all of them and its short fields.
MARK = 16
TEXT_BYTES = 1024 + MARK  # the path, the query
PROVIDER_BYTES = 64 + MARK
ALL_HEADERS_BYTES = HEADERS_BYTES + 64  # and the entry that counts the headers not kept
ROW_BYTES = ALL_HEADERS_BYTES + UNPROVEN_BODY_BYTES + 2 * TEXT_BYTES + PROVIDER_BYTES + 512


async def raw_http(live: LiveReceiver, request: bytes) -> int:
    """Send `request` as given on a connection of its own; the answer's status code."""
    host, port = live.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


def head(method: str, target: str, *headers: str) -> bytes:
    """A request head (and no body) with `headers`, closing the connection after."""
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1", "connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def make_job(live: LiveReceiver, provider: str = "rixapi") -> Job:
    at = now()
    job = Job(
        id=new_id("job"),
        provider=provider,
        task_id="t-1",
        status=Status.RUNNING,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(NewJob(job=job, token_hash=digest(TOKEN)))
    return job


def database_bytes(directory: Path) -> int:
    """The SQLite database's size on disk, its write-ahead log included."""
    return sum(
        os.path.getsize(path)
        for path in (directory / "receiver.db", directory / "receiver.db-wal")
        if path.exists()
    )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveReceiver]:
    env = {
        "RECEIVER_AUTH_FAILURE_BURST": "3",
        "RECEIVER_AUTH_FAILURE_RATE": "0.01",
        "RECEIVER_MAX_BODY_BYTES": "4096",
    }
    async with running_receiver(tmp_path, env=env) as receiver:
        yield receiver


# Each a request refused with a 4xx other than 401: before, none of these was counted.
KINDS = {
    "413-declared-too-large": (
        413,
        head("POST", "/hooks/apiframe/x", "content-length: 5000000", f"x-pad: {PAD}"),
    ),
    "400-bad-body-proven": (
        400,
        head("POST", f"/hooks/rixapi/{TOKEN}", "content-length: 5").replace(
            b"\r\n\r\n", b"\r\n\r\n{nope"
        ),
    ),
    "405-wrong-method": (405, head("PUT", f"/hooks/rixapi/{TOKEN}", "content-length: 0")),
    "404-no-such-route": (404, head("POST", "/hooks/apiframe/x/y", "content-length: 0")),
    "405-nudge-static-route": (405, head("GET", "/hooks/apiframe")),
}


class TestEveryRefusalCounts:
    """Any 4xx on a hook route takes from the address's budget: a burst, then 429."""

    @pytest.mark.parametrize("kind", list(KINDS))
    async def test_a_burst_then_429(self, live: LiveReceiver, kind: str) -> None:
        """Three refusals of one kind are answered as such; the fourth request gets 429."""
        code, request = KINDS[kind]
        await make_job(live)
        codes = [await raw_http(live, request) for _ in range(5)]
        assert [code] * 3 + [429] * 2 == codes

    async def test_a_limited_address_is_refused_before_a_no_route_answer(
        self, live: LiveReceiver
    ) -> None:
        """Once the budget is spent, even a path or method no hook route takes gets 429."""
        await make_job(live)
        for _ in range(3):
            await raw_http(live, KINDS["413-declared-too-large"][1])
        assert 429 == await raw_http(live, KINDS["405-wrong-method"][1])
        assert 429 == await raw_http(live, KINDS["404-no-such-route"][1])

    async def test_other_routes_are_not_counted(self, live: LiveReceiver) -> None:
        """A 4xx off the hook routes (an unknown page, the admin API) costs nothing here."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            for _ in range(5):
                assert 404 == (await client.get("/no/such/page")).status_code
                assert 401 == (await client.get("/jobs")).status_code
            await make_job(live)
            answer = await client.post(f"/hooks/rixapi/{TOKEN}", json=RUNNING)
        assert 200 == answer.status_code

    async def test_429s_do_not_deepen_the_debt(self, tmp_path: Path) -> None:
        """Requests answered 429 are not counted: the budget refills as if they never came."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "3", "RECEIVER_AUTH_FAILURE_RATE": "2"}
        async with running_receiver(tmp_path, env=env) as receiver:
            await make_job(receiver)
            codes = [await raw_http(receiver, KINDS["405-wrong-method"][1]) for _ in range(25)]
            assert 429 in codes and codes.count(405) <= 5
            await asyncio.sleep(1.0)  # two refusals' worth of refill
            async with httpx.AsyncClient(base_url=receiver.url) as client:
                answer = await client.post(f"/hooks/rixapi/{TOKEN}", json=RUNNING)
        assert 200 == answer.status_code


class TestFlood:
    """A bounded flood of hostile refusals from one address grows the database by little."""

    async def test_one_address_gets_429_and_the_database_stays_small(self, tmp_path: Path) -> None:
        """300 oversized, huge-header and garbage requests: 429 after the default burst of
        20, and what is kept fits the caps (before: 64 KiB of header kept per request)."""
        long_query = "a=" + "q" * 8 * 1024
        requests = [
            head("POST", "/hooks/apiframe/x", "content-length: 5000000", f"x-pad: {PAD}"),
            head("POST", f"/hooks/apiframe/{'g' * 5000}", "content-length: 0", f"x-a: {PAD}"),
            head("PUT", "/hooks/apiframe/x", "content-length: 0", f"x-pad: {PAD}"),
            head("POST", f"/hooks/nosuch?{long_query}", "content-length: 0", f"x-pad: {PAD}"),
            head("GET", f"/hooks/{'p' * 8000}/x", *(f"x-h{n}: {'v' * 900}" for n in range(50))),
        ]
        async with running_receiver(tmp_path) as live:
            before = database_bytes(tmp_path)
            started = time.monotonic()
            codes = [await raw_http(live, requests[n % len(requests)]) for n in range(300)]
            refilled = math.ceil((time.monotonic() - started) * 0.5)  # the default rate
            rows = await live.runtime.store.list_quarantine(limit=1000)
            grown = database_bytes(tmp_path) - before
        assert {429, 413, 404, 405} >= set(codes)
        assert 300 - 20 - refilled <= codes.count(429), codes
        assert 0 < len(rows) <= 300 - codes.count(429)  # a 429 keeps nothing
        for row in rows:
            assert TEXT_BYTES >= len(row.path)
            assert TEXT_BYTES >= len(row.query)
            assert PROVIDER_BYTES >= len(row.provider)
            assert ALL_HEADERS_BYTES >= sum(len(k) + len(v) for k, v in row.headers.items())
            assert UNPROVEN_BODY_BYTES >= len(row.body)
        # Each row is written twice (the write-ahead log, then the database) into pages
        # that are partly empty: four times its capped size is the most it can cost.
        assert grown <= len(rows) * ROW_BYTES * 4, f"the database grew by {grown} bytes"


class TestRowCap:
    """The quarantine keeps the newest RECEIVER_QUARANTINE_MAX_ROWS rows, trimmed as it goes."""

    async def test_many_addresses_cannot_grow_the_table_past_the_cap(self, tmp_path: Path) -> None:
        """120 refusals from 120 addresses (through a trusted proxy) leave at most the cap
        and a trim's interval of rows, the newest ones."""
        env = {"RECEIVER_QUARANTINE_MAX_ROWS": "20", "RECEIVER_TRUSTED_PROXIES": "127.0.0.1"}
        async with running_receiver(tmp_path, env=env) as live:
            async with httpx.AsyncClient(base_url=live.url) as client:
                for n in range(120):
                    answer = await client.post(
                        f"/hooks/rixapi/guess-{n}",
                        content=b"x",
                        headers={"x-forwarded-for": f"198.51.{n // 200}.{n % 200 + 1}"},
                    )
                    assert 404 == answer.status_code
            rows = await live.runtime.store.list_quarantine(limit=1000)
        assert 20 <= len(rows) <= 22  # trimmed every 2 inserts (a tenth of the cap)
        assert "198.51.0.120" == rows[0].client

    async def test_a_table_over_the_cap_is_brought_down_in_batches(self, tmp_path: Path) -> None:
        """A table left far over the cap shrinks by a batch per trim, not in one big delete."""
        store = SQLiteStore(f"sqlite:///{tmp_path / 'q.db'}")
        await store.open()
        try:
            quarantine = Quarantine(store, max_rows=5)
            raw = RawRequest(
                id="req_1",
                received_at=now(),
                provider="rixapi",
                method="POST",
                path="/hooks/rixapi",
                query="",
                headers={},
                body=b"",
            )
            for _ in range(2500):
                await store.quarantine(quarantined(raw, Reject(404, "unknown_token")))
            await quarantine.keep(raw, Reject(404, "unknown_token"))
            assert 2501 - 1000 == len(await store.list_quarantine(limit=5000))
            await quarantine.keep(raw, Reject(404, "unknown_token"))
            await quarantine.keep(raw, Reject(404, "unknown_token"))
            assert 5 == len(await store.list_quarantine(limit=5000))
        finally:
            await store.close()


class TestCaps:
    """What is kept of a request is redacted first, then cut to its caps."""

    async def test_accepted_callbacks_are_kept_capped_on_every_route(self, tmp_path: Path) -> None:
        """A callback to the static route (apiframe, with its secret) and one to a job's own
        URL (rixapi, its token alone) keep their headers within the same caps."""
        env = {"RECEIVER_APIFRAME_WEBHOOK_SECRET": "static-" + "s" * 40}
        async with (
            running_receiver(tmp_path, env=env) as live,
            httpx.AsyncClient(base_url=live.url) as client,
        ):
            static = await client.post(
                "/hooks/apiframe",
                json={"task_id": "t-9", "status": "processing", "percentage": 10},
                headers={"x-webhook-secret": "static-" + "s" * 40, "x-pad": PAD},
            )
            job = await make_job(live)
            by_token = await client.post(
                f"/hooks/rixapi/{TOKEN}", json=RUNNING, headers={"x-pad": PAD}
            )
            static_job = await live.runtime.store.job_by_task("apiframe", "t-9")
            assert static_job is not None
            kept = [
                *await live.runtime.store.list_requests(static_job.id),
                *await live.runtime.store.list_requests(job.id),
            ]
        assert (200, 200) == (static.status_code, by_token.status_code)
        assert 2 == len(kept)
        for raw in kept:
            assert "x" * 1024 + f"[+{len(PAD) - 1024}]" == raw.headers["x-pad"]

    def test_long_values_are_cut_and_say_by_how_much(self) -> None:
        """A value over its cap keeps its start and the count of what was cut."""
        assert "abc" == capped("abc", 3)
        assert "ab[+2]" == capped("abcd", 2)

    def test_headers_are_capped_one_by_one_and_in_all(self) -> None:
        """Each header value to 1 KiB, each name to 128, all to 8 KiB; the rest counted."""
        headers = {"x-pad": "x" * 1_000_000, "n" * 1000: "v"}
        headers.update({f"x-h{n}": "v" * 1000 for n in range(20)})
        kept = kept_headers(headers)
        assert ALL_HEADERS_BYTES >= sum(len(k) + len(v) for k, v in kept.items())
        assert "x" * 1024 + "[+998976]" == kept["x-pad"]
        assert "n" * 128 + "[+872]" in kept
        assert kept["[not kept]"].endswith("more headers")

    def test_a_long_secret_header_is_redacted_by_its_whole_name(self) -> None:
        """Redaction reads the whole name before the name is cut."""
        name = "x-" + "a" * 300 + "-webhook-secret"
        kept = kept_headers({name: "s3cret"})
        assert [REDACTED] == list(kept.values())

    @pytest.mark.parametrize(
        ("status_code", "limit"),
        [(400, PROVEN_BODY_BYTES), (401, UNPROVEN_BODY_BYTES), (413, UNPROVEN_BODY_BYTES)],
    )
    def test_bodies_are_kept_up_to_their_caller_s_proof(self, status_code: int, limit: int) -> None:
        """A 400 (the caller proved itself first) keeps 64 KiB of body; any other 4 KiB."""
        raw = RawRequest(
            id="req_1",
            received_at=now(),
            provider="p" * 1000,
            method="POST",
            path="/hooks/p",
            query="",
            headers={},
            body=b"b" * 1_000_000,
        )
        entry = quarantined(raw, Reject(status_code, "why"))
        assert (limit, "p" * 64 + "[+936]") == (len(entry.body), entry.provider)
