"""Slow and idle clients are cut off, and open connections are capped, per client address too.

A real `receiver serve` with short deadlines: slow heads and slow bodies from 127.0.0.2
are closed when their deadline passes, while a provider on 127.0.0.3 is answered, also
with the process held to 256 open files; one address past its connection cap is refused
with a 503 and Retry-After while another is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from flood import SLOW_BODY, SLOW_HEAD, Provider, hold, limit_open_files, open_files
from live_process import SECRET, ReceiverProcess, callback, stored_callbacks
from procs import HANDLER_MODULE

from receiver.config import load_settings
from receiver.connections import FD_RESERVE, REFUSING, ConnectionCounter, limits_for
from receiver.errors import ConfigError

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
SLACK = 2.5  # a loaded test machine: how late a deadline may act


@pytest.fixture
def start(tmp_path: Path) -> Callable[..., ReceiverProcess]:
    (tmp_path / "conn_handlers.py").write_text(HANDLER_MODULE)

    def make(
        env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> ReceiverProcess:
        settings = {
            "RECEIVER_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
            "RECEIVER_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "RECEIVER_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        return ReceiverProcess(
            tmp_path, handlers="conn_handlers", env=settings, preexec_fn=preexec_fn
        )

    return make


@pytest.fixture
async def stop_after() -> AsyncIterator[list[ReceiverProcess]]:
    started: list[ReceiverProcess] = []
    yield started
    for receiver in started:
        receiver.kill()


class TestSlowClients:
    """Slow heads and slow bodies are closed at their deadline while a provider is served."""

    async def test_slow_heads_and_bodies_are_closed_by_the_deadline_during_valid_callbacks(
        self, start: Callable[..., ReceiverProcess], stop_after: list[ReceiverProcess]
    ) -> None:
        receiver = start(
            {"RECEIVER_MAX_CONNECTIONS_PER_CLIENT": "64"}, preexec_fn=limit_open_files(256)
        )
        stop_after.append(receiver)
        await receiver.start()
        slow = [
            hold(receiver.port, "127.0.0.2", opening, HEAD_TIMEOUT + SLACK + 5)
            for opening in [SLOW_HEAD] * 30 + [SLOW_BODY] * 30
        ]
        provider = Provider(receiver.url, "127.0.0.3")
        held, _ = await asyncio.gather(
            asyncio.gather(*slow), provider.run("during-slow", count=40, senders=4)
        )

        assert [h.closed for h in held] == [True] * 60
        closed_at = sorted(h.seconds for h in held)
        assert closed_at[0] >= 0.8 * HEAD_TIMEOUT  # the deadline did it, not a refusal
        assert closed_at[-1] <= HEAD_TIMEOUT + SLACK
        assert {h.answer for h in held} == {b""}
        assert (len(provider.acknowledged), provider.lost) == (40, [])
        stored = stored_callbacks(receiver.db)
        assert set(provider.acknowledged) <= set(stored)

    async def test_three_hundred_slow_bodies_under_256_open_files_do_not_lock_out_a_provider(
        self, start: Callable[..., ReceiverProcess], stop_after: list[ReceiverProcess]
    ) -> None:
        receiver = start(preexec_fn=limit_open_files(256))
        stop_after.append(receiver)
        await receiver.start()
        slow = [hold(receiver.port, "127.0.0.2", SLOW_BODY, 10) for _ in range(300)]
        flood = asyncio.gather(*slow)
        await asyncio.sleep(0.3)  # the slow bodies are in
        peak = open_files(receiver.pid)
        provider = Provider(receiver.url, "127.0.0.3", attempts=1)
        await provider.run("under-flood", count=40, senders=4)
        held = await flood

        assert (len(provider.acknowledged), provider.lost, provider.refusals) == (40, [], {})
        assert peak < 256
        assert all(h.closed and h.seconds <= BODY_TIMEOUT + SLACK for h in held)

    async def test_a_progressing_upload_slower_than_the_body_timeout_is_not_cut(
        self, start: Callable[..., ReceiverProcess], stop_after: list[ReceiverProcess]
    ) -> None:
        receiver = start({"RECEIVER_BODY_MIN_RATE": "8192"})
        stop_after.append(receiver)
        await receiver.start()
        body = httpx.Request(
            "POST", "http://x", json={**callback("slow-upload"), "padding": " " * 60_000}
        ).content
        head = (
            f"POST /hooks/apiframe HTTP/1.1\r\nhost: receiver\r\nx-webhook-secret: {SECRET}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", receiver.port, local_addr=("127.0.0.3", 0)
        )
        writer.write(head)
        for offset in range(0, len(body), 4096):  # 16 KiB/s: about 4 s for the body
            writer.write(body[offset : offset + 4096])
            await writer.drain()
            await asyncio.sleep(0.25)
        answer = await asyncio.wait_for(reader.read(12), 5)
        writer.close()

        assert answer == b"HTTP/1.1 200"
        assert "slow-upload" in stored_callbacks(receiver.db)


class TestConnectionCaps:
    """An address holding its share of connections is refused past it; others are served."""

    async def test_an_address_at_its_cap_is_refused_while_another_is_served(
        self, start: Callable[..., ReceiverProcess], stop_after: list[ReceiverProcess]
    ) -> None:
        receiver = start(
            {"RECEIVER_MAX_CONNECTIONS_PER_CLIENT": "4", "RECEIVER_BODY_TIMEOUT": "30"}
        )
        stop_after.append(receiver)
        await receiver.start()
        held = [
            asyncio.ensure_future(hold(receiver.port, "127.0.0.2", SLOW_BODY, 30)) for _ in range(4)
        ]
        await asyncio.sleep(0.3)
        past_cap = await hold(receiver.port, "127.0.0.2", b"GET /healthz HTTP/1.1\r\n\r\n", 5)
        other = Provider(receiver.url, "127.0.0.3", attempts=1)
        await other.run("beside-a-full-address", count=5, senders=1)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await asyncio.sleep(0.3)  # the server sees them go
        again = await hold(
            receiver.port, "127.0.0.2", b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n", 5
        )

        assert past_cap.answer.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 5\r\n" in past_cap.answer
        assert past_cap.seconds < 1
        assert (len(other.acknowledged), other.refusals) == (5, {})
        assert again.answer.startswith(b"HTTP/1.1 200 ")

    @pytest.mark.parametrize("size", [70_000, 200_000])
    async def test_a_head_larger_than_its_cap_is_refused(
        self, start: Callable[..., ReceiverProcess], stop_after: list[ReceiverProcess], size: int
    ) -> None:
        receiver = start()
        stop_after.append(receiver)
        await receiver.start()
        huge = b"GET /healthz HTTP/1.1\r\n" + b"x-filler: " + b"a" * size + b"\r\n\r\n"

        answer = await hold(receiver.port, "127.0.0.2", huge, 5)

        assert answer.answer.startswith(b"HTTP/1.1 431 ")


class TestClientShares:
    """Connections are counted per client: an IPv6 /64 is one client, a trusted proxy none."""

    def counter(self, proxies: str = "") -> ConnectionCounter:
        limits, _ = limits_for(
            load_settings(
                {"RECEIVER_MAX_CONNECTIONS_PER_CLIENT": "2", "RECEIVER_TRUSTED_PROXIES": proxies}
            ),
            soft_limit=1024,
        )
        return ConnectionCounter(limits)

    def test_addresses_of_one_ipv6_64_share_one_cap(self) -> None:
        counter = self.counter()
        keys = [counter.key_for(f"2001:db8:0:7::{n}") for n in (1, 2, 3)]

        assert [counter.admit(key) for key in keys] == [True, True, False]
        assert counter.admit(counter.key_for("2001:db8:0:8::1")) is True

    def test_an_ipv4_mapped_address_counts_as_its_ipv4_one(self) -> None:
        counter = self.counter()

        assert counter.key_for("::ffff:192.0.2.7") == counter.key_for("192.0.2.7")

    def test_a_trusted_proxy_is_held_to_the_total_cap_only(self) -> None:
        counter = self.counter(proxies="10.0.0.1")

        assert all(counter.admit(counter.key_for("10.0.0.1")) for _ in range(10))
        assert counter.total == 10

    def test_a_released_connection_frees_its_share(self) -> None:
        counter = self.counter()
        key = counter.key_for("192.0.2.7")
        counter.admit(key)
        counter.admit(key)

        counter.release(key)

        assert (counter.admit(key), counter.admit(key)) == (True, False)


class TestLimitsFromSettings:
    """The caps follow RLIMIT_NOFILE: derived from it when unset, lowered to fit it when set."""

    def test_unset_caps_are_derived_from_the_open_file_limit(self) -> None:
        limits, warning = limits_for(load_settings({}), soft_limit=256)

        assert (limits.max_connections, limits.max_per_client, warning) == (
            256 - FD_RESERVE - REFUSING - 64,
            (256 - FD_RESERVE - REFUSING - 64) // 8,
            "",
        )

    def test_a_cap_above_the_open_file_limit_is_lowered_with_a_warning(self) -> None:
        settings = load_settings({"RECEIVER_MAX_CONNECTIONS": "5000"})

        limits, warning = limits_for(settings, soft_limit=1024)

        assert limits.max_connections == 1024 - FD_RESERVE - REFUSING - 64
        assert "RECEIVER_MAX_CONNECTIONS lowered from 5000" in warning

    def test_an_open_file_limit_too_low_to_serve_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="RLIMIT_NOFILE"):
            limits_for(load_settings({}), soft_limit=100)

    def test_a_per_client_cap_above_the_total_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigError, match="MAX_CONNECTIONS_PER_CLIENT"):
            load_settings(
                {"RECEIVER_MAX_CONNECTIONS": "10", "RECEIVER_MAX_CONNECTIONS_PER_CLIENT": "11"}
            )

    @pytest.mark.parametrize(
        "variable", ["RECEIVER_HEAD_TIMEOUT", "RECEIVER_BODY_TIMEOUT", "RECEIVER_MAX_CONNECTIONS"]
    )
    def test_a_deadline_or_cap_that_is_not_positive_is_a_configuration_error(
        self, variable: str
    ) -> None:
        with pytest.raises(ConfigError, match=variable):
            load_settings({variable: "0"})
