"""Hostile callers: failed authentication is rate limited per address and per token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.dispatch import Registry
from receiver.errors import ConfigError
from receiver.models import Job, Status, new_id, now
from receiver.ratelimit import FailureLimiter, client_address, client_key, parse_networks
from receiver.refusals import address_wait, charge
from receiver.store import NewJob
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import digest

TOKEN = "tok-" + "r" * 40
SECRET = "sec-" + "s" * 40
FINISHED = {
    "task_id": "t-1",
    "status": "finished",
    "percentage": 100,
    "video_url": "https://x/v.mp4",
}


class TestBuckets:
    """A bucket holds `burst` failures and refills at `rate` per second."""

    def test_burst_then_limited_then_refilled(self) -> None:
        """Three failures pass, the fourth key check says wait, and time refills it."""
        limiter = FailureLimiter(burst=3, rate=0.5)
        for _ in range(3):
            assert limiter.retry_after("k", 0.0) is None
            limiter.failed("k", 0.0)
        assert 2 == limiter.retry_after("k", 0.0)
        assert limiter.retry_after("k", 2.0) is None
        assert limiter.retry_after("other", 0.0) is None

    def test_memory_is_bounded(self) -> None:
        """Past `max_keys`, the least recently failed keys are forgotten."""
        limiter = FailureLimiter(burst=1, rate=0.001, max_keys=100)
        for number in range(1000):
            limiter.failed(f"k{number}", 0.0)
        assert limiter.retry_after("k999", 0.0) is not None
        assert limiter.retry_after("k0", 0.0) is None
        assert 100 == len(limiter._buckets)


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    """An ASGI scope from `peer` with one X-Forwarded-For line per `forwarded` value."""
    headers = [(b"host", b"x"), *((b"x-forwarded-for", line.encode()) for line in forwarded)]
    return {"type": "http", "client": (peer, 1234) if peer else None, "headers": headers}


class TestClientKey:
    """An IPv6 client is counted as its /64, so rotating addresses in it buys no budget."""

    def test_ipv6_addresses_of_one_64_share_a_key(self) -> None:
        assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
        assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")

    def test_ipv4_and_mapped_ipv4_are_one_client(self) -> None:
        assert "192.0.2.7" == client_key("::ffff:192.0.2.7") == client_key("192.0.2.7")

    def test_refusals_from_one_64_spend_one_budget(self) -> None:
        """Twenty refusals from twenty addresses of one /64 leave a twenty-first address
        of it waiting, while another /64 is untouched."""
        limiter = FailureLimiter(burst=20, rate=0.5)
        for host in range(1, 21):
            charge(limiter, f"2001:db8:0:1::{host:x}", None, 100.0)
        assert address_wait(limiter, "2001:db8:0:1::abcd", 100.0) is not None
        assert address_wait(limiter, "2001:db8:0:2::1", 100.0) is None


class TestClientAddress:
    """X-Forwarded-For is believed only from trusted proxies, all its lines as one list."""

    PROXIES = parse_networks("10.0.0.0/8, 192.168.1.7")

    @pytest.mark.parametrize(
        ("peer", "forwarded", "expected"),
        [
            ("203.0.113.5", ["1.2.3.4"], "203.0.113.5"),  # untrusted peer: header ignored
            ("10.1.2.3", ["1.2.3.4"], "1.2.3.4"),
            ("10.1.2.3", ["6.6.6.6, 1.2.3.4, 10.9.9.9"], "1.2.3.4"),  # right-most untrusted
            ("192.168.1.7", ["10.0.0.1, 10.0.0.2"], "192.168.1.7"),  # all trusted: the peer
            ("10.1.2.3", ["1.2.3.4, not-an-ip"], "10.1.2.3"),  # a broken chain is not believed
            ("10.1.2.3", [], "10.1.2.3"),
            # A proxy that appends its own line: the lines are one list, the last one counts.
            ("10.1.2.3", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),
            ("10.1.2.3", ["6.6.6.6, 7.7.7.7", "1.2.3.4, 10.9.9.9"], "1.2.3.4"),
            ("10.1.2.3", ["1.2.3.4", "10.9.9.9"], "1.2.3.4"),
            ("10.1.2.3", ["1.2.3.4", "not-an-ip"], "10.1.2.3"),
            ("10.1.2.3", ["1.2.3.4,, ", ""], "1.2.3.4"),  # empty elements are skipped
            ("203.0.113.5", ["1.2.3.4", "5.6.7.8"], "203.0.113.5"),
        ],
    )
    def test_forwarded_for(self, peer: str, forwarded: list[str], expected: str) -> None:
        """The right-most hop that is not a trusted proxy is the client."""
        assert expected == client_address(scope(peer, *forwarded), self.PROXIES)

    def test_no_peer_is_no_address(self) -> None:
        """A scope without a client (a Unix socket) has no address to budget."""
        assert None is client_address(scope(None, "1.2.3.4"), self.PROXIES)

    def test_without_trusted_proxies_the_header_is_never_read(self) -> None:
        """With no RECEIVER_TRUSTED_PROXIES the peer is the client, whatever is forwarded."""
        assert "10.1.2.3" == client_address(scope("10.1.2.3", "1.2.3.4"), ())

    def test_bad_setting_is_named(self) -> None:
        """A typo in RECEIVER_TRUSTED_PROXIES is a ConfigError naming it and the entry."""
        with pytest.raises(ConfigError, match=r"RECEIVER_TRUSTED_PROXIES: '10\.0\.0\.0/33'"):
            parse_networks("10.0.0.0/33")


class Fired:
    def __init__(self) -> None:
        self.count = 0

    def registry(self) -> Registry:
        registry = Registry()

        @registry.on("*")
        async def record(event: Any, job: Any) -> None:
            self.count += 1

        return registry


@pytest.fixture
def fired() -> Fired:
    return Fired()


async def make_job(live: LiveReceiver) -> Job:
    at = now()
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id="t-1",
        status=Status.RUNNING,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(
        NewJob(job=job, token_hash=digest(TOKEN), secret_hash=digest(SECRET))
    )
    return job


@pytest.fixture
async def live(tmp_path: Path, fired: Fired) -> AsyncIterator[LiveReceiver]:
    env = {
        "RECEIVER_AUTH_FAILURE_BURST": "5",
        "RECEIVER_AUTH_FAILURE_RATE": "0.05",
        "RECEIVER_TRUSTED_PROXIES": "127.0.0.1",
    }
    async with running_receiver(tmp_path, env=env, handlers=fired.registry()) as receiver:
        yield receiver


async def post(
    live: LiveReceiver, secret: str, *, via: str | list[str] | None = None, token: str = TOKEN
) -> httpx.Response:
    """A callback; `via` is an X-Forwarded-For value, or a list of them, one line each."""
    lines = [via] if isinstance(via, str) else via or []
    headers = [("x-webhook-secret", secret), *(("x-forwarded-for", line) for line in lines)]
    async with httpx.AsyncClient(base_url=live.url) as client:
        return await client.post(f"/hooks/apiframe/{token}", json=FINISHED, headers=headers)


class TestLiveLimits:
    """Over HTTP: 429 after a burst, nothing quarantined or fired, and recovery."""

    async def test_an_address_is_limited_after_a_burst(
        self, live: LiveReceiver, fired: Fired
    ) -> None:
        """Five wrong secrets get 401; the sixth request, even a right one, gets 429."""
        job = await make_job(live)
        codes = [(await post(live, "wrong", via="198.51.100.1")).status_code for _ in range(5)]
        assert [401] * 5 == codes
        refused = await post(live, SECRET, via="198.51.100.1")
        assert 429 == refused.status_code
        assert int(refused.headers["retry-after"]) >= 1
        assert SECRET not in refused.text
        assert 5 == len(await live.runtime.store.list_quarantine())
        await live.runtime.dispatcher.drain(timeout=5)
        assert 0 == fired.count
        assert Status.RUNNING == (await live.runtime.store.get_job(job.id)).status  # type: ignore[union-attr]
        elsewhere = await post(live, SECRET, via="198.51.100.2")
        assert 200 == elsewhere.status_code, "another address is not affected"

    async def test_the_limit_lifts_with_time(self, tmp_path: Path) -> None:
        """After Retry-After, the address may try again."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "2", "RECEIVER_AUTH_FAILURE_RATE": "2"}
        async with running_receiver(tmp_path, env=env) as live:
            await make_job(live)
            answers = [await post(live, "wrong") for _ in range(3)]
            if answers[-1].status_code != 429:  # a slow machine refilled the bucket meanwhile
                answers.append(await post(live, "wrong"))
            assert 429 == answers[-1].status_code
            await asyncio.sleep(float(answers[-1].headers["retry-after"]))
            assert 200 == (await post(live, SECRET)).status_code

    async def test_a_token_hammered_from_many_addresses_is_limited_but_its_provider_is_not(
        self, live: LiveReceiver, fired: Fired
    ) -> None:
        """Failures on one token from many addresses hit 429; the right secret still works."""
        await make_job(live)
        codes = [
            (await post(live, "wrong", via=f"203.0.113.{n}")).status_code for n in range(1, 12)
        ]
        assert [401] * 5 == codes[:5]
        assert {429} == set(codes[5:])
        assert 5 == len(await live.runtime.store.list_quarantine()), "429s write nothing"
        assert 200 == (await post(live, SECRET, via="203.0.113.200")).status_code
        await live.runtime.dispatcher.drain(timeout=5)
        assert 1 == fired.count

    async def test_unknown_tokens_count_too(self, live: LiveReceiver) -> None:
        """Guessing tokens (404s) uses up the address's budget like wrong secrets do."""
        codes = [
            (await post(live, "x", via="198.51.100.9", token=f"guess{n}")).status_code
            for n in range(7)
        ]
        assert [404] * 5 + [429] * 2 == codes

    async def test_a_line_appended_by_the_proxy_names_the_client(
        self, live: LiveReceiver, fired: Fired
    ) -> None:
        """A trusted proxy adds its own X-Forwarded-For line: that line, not the caller's
        forged first one, is the address budgeted and kept, on every hook route."""
        await make_job(live)
        codes = [
            (
                await post(live, "x", via=[f"6.6.6.{n}", "198.51.100.7"], token=f"guess{n}")
            ).status_code
            for n in range(6)
        ]
        assert [404] * 5 + [429] == codes
        # The right secret meets the spent address budget too.
        assert 429 == (await post(live, SECRET, via=["6.6.6.99", "198.51.100.7"])).status_code
        assert {"198.51.100.7"} == {e.client for e in await live.runtime.store.list_quarantine()}
        assert 200 == (await post(live, SECRET, via=["198.51.100.7", "198.51.100.8"])).status_code

    async def test_forwarded_for_from_an_untrusted_peer_is_ignored(self, tmp_path: Path) -> None:
        """Without trusted proxies, changing X-Forwarded-For does not escape the limit."""
        env = {"RECEIVER_AUTH_FAILURE_BURST": "3", "RECEIVER_AUTH_FAILURE_RATE": "0.1"}
        async with running_receiver(tmp_path, env=env) as live:
            await make_job(live)
            codes = [(await post(live, "wrong", via=f"192.0.2.{n}")).status_code for n in range(5)]
            assert [401, 401, 401, 429, 429] == codes
            [entry, *_] = await live.runtime.store.list_quarantine()
            assert "127.0.0.1" == entry.client
