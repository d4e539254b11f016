"""Connection limits for `receiver serve`: deadlines for slow clients, caps on open connections.

uvicorn alone keeps a connection open for as long as its client likes while a request's
head or body is incomplete (its keep-alive timer runs only between requests), reads a
head of any size, and its `limit_concurrency` is one global count checked only once a
head is complete. So 300 clients that declared a body and sent one byte of it held 300
file descriptors until they let go, and past RLIMIT_NOFILE real callbacks were reset.

`guarded_protocol` subclasses uvicorn's httptools protocol with:
- a head deadline: from the connection (or the first byte of a next request on a
  kept-alive one) to the end of the head, `head_timeout` seconds, and at most
  `MAX_HEAD_BYTES` of it (past that: 431 and close);
- a body deadline that a progressing upload does not hit: `body_timeout` seconds plus one
  second per `body_min_rate` bytes received, counted from the end of the head;
- caps on open connections, in total and per client address (an IPv6 client is its /64),
  checked as a connection is accepted. Past either, the request is answered 503 with
  Retry-After as soon as it is read (within REFUSAL_WAIT), and the connection closed; at
  most REFUSING connections wait so at once, past that one is closed without an answer.

A deadline that passes aborts the connection; the app sees `http.disconnect`. Addresses in
RECEIVER_TRUSTED_PROXIES are exempt from the per-client cap: behind a proxy every client
shares its address, and the proxy is where per-client limits belong.

What this does not do, and belongs in front (a reverse proxy, a load balancer, a
firewall): TLS; per-client limits and timeouts when clients arrive through a proxy (nginx
`limit_conn`, `client_header_timeout`, `client_body_timeout`); request rates per address;
and floods from more addresses than the caps can share out (a distributed attack fills the
global cap whatever the per-address share). What stays here even behind a proxy: the
global cap against RLIMIT_NOFILE, the deadlines, and the head size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.config import Settings
from receiver.errors import ConfigError
from receiver.one_write import OneWriteProtocol
from receiver.ratelimit import Network, client_key, parse_networks

__all__ = [
    "FD_RESERVE",
    "MAX_HEAD_BYTES",
    "REFUSING",
    "ConnectionCounter",
    "ConnectionLimits",
    "descriptor_budget",
    "guarded_protocol",
    "limits_for",
]

# A request head (request line and headers) larger than this is refused with 431; a
# provider's callback head is well under 2 KiB, and nginx's default buffers total 32 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Descriptors kept for everything that is not an incoming connection: the listener, the
# store and its WAL, log files, the poller's connections, imports; handlers come on top.
FD_RESERVE = 64
# Refused connections wait up to REFUSAL_WAIT seconds for their request, to be answered
# 503; at most REFUSING at once (their descriptors come out of the budget), past that
# they are closed at once.
REFUSING = 32
REFUSAL_WAIT = 1.0
# Unset caps: at most this many connections, and each client address an eighth of them
# (at most PER_CLIENT): a flood must come from eight addresses to fill the server.
DEFAULT_MAX_CONNECTIONS = 4096
PER_CLIENT_SHARE = 8
PER_CLIENT = 32

_HEAD, _BODY, _DONE = 0, 1, 2  # where a connection is in its current request


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The deadlines and caps one server applies (see the module docstring)."""

    head_timeout: float
    body_timeout: float
    body_min_rate: float
    max_connections: int
    max_per_client: int
    retry_after: int
    exempt: tuple[Network, ...] = ()
    max_head_bytes: int = MAX_HEAD_BYTES


def descriptor_budget(handler_concurrency: int, soft_limit: int | None = None) -> int:
    """How many client connections fit under RLIMIT_NOFILE beside what the process needs."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return 1 << 20
    return soft_limit - FD_RESERVE - REFUSING - handler_concurrency


def limits_for(settings: Settings, soft_limit: int | None = None) -> tuple[ConnectionLimits, str]:
    """The limits `settings` give under this process's RLIMIT_NOFILE, and a warning or "".

    A cap set above what the descriptors allow is lowered to fit (with the warning); a
    limit that leaves room for fewer than 8 connections is a ConfigError.
    """
    handlers = 0 if settings.no_worker else settings.handler_concurrency
    budget = descriptor_budget(handlers, soft_limit)
    if budget < 8:
        raise ConfigError(
            f"RLIMIT_NOFILE leaves room for {max(budget, 0)} connections; raise it (ulimit -n)"
            f" to at least {FD_RESERVE + REFUSING + handlers + 64}"
        )
    warnings = []
    total = settings.max_connections or min(DEFAULT_MAX_CONNECTIONS, budget)
    if total > budget:
        warnings.append(f"RECEIVER_MAX_CONNECTIONS lowered from {total} to {budget}")
        total = budget
    share = max(1, total // PER_CLIENT_SHARE)
    per_client = settings.max_connections_per_client or min(PER_CLIENT, share)
    if per_client > total:
        warnings.append(f"RECEIVER_MAX_CONNECTIONS_PER_CLIENT lowered from {per_client} to {total}")
        per_client = total
    warning = ""
    if warnings:
        warning = "; ".join(warnings) + " to fit the open-file limit (RLIMIT_NOFILE, ulimit -n)"
    limits = ConnectionLimits(
        head_timeout=settings.head_timeout,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        max_connections=total,
        max_per_client=per_client,
        retry_after=settings.retry_after,
        exempt=parse_networks(settings.trusted_proxies),
    )
    return limits, warning


class ConnectionCounter:
    """Open connections, in total and per client address (the exempt ones counted in total only)."""

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.refusing = 0  # refused connections waiting to be answered
        self._exempt: dict[str, bool] = {}  # per address seen, when there are proxies

    def key_for(self, address: str | None) -> str | None:
        """The per-client key a connection from `address` counts under; None for none."""
        if address is None or self._is_exempt(address):
            return None
        return client_key(address)

    def admit(self, key: str | None) -> bool:
        """Count a new connection under `key`, or refuse it (False) past a cap."""
        limits = self.limits
        if self.total >= limits.max_connections:
            return False
        if key is not None:
            held = self.by_address.get(key, 0)
            if held >= limits.max_per_client:
                return False
            self.by_address[key] = held + 1
        self.total += 1
        return True

    def release(self, key: str | None) -> None:
        """Forget a connection `admit` counted under `key`."""
        self.total -= 1
        if key is not None:
            held = self.by_address[key] - 1
            if held:
                self.by_address[key] = held
            else:
                del self.by_address[key]

    def _is_exempt(self, address: str) -> bool:
        proxies = self.limits.exempt
        if not proxies:
            return False
        known = self._exempt.get(address)
        if known is None:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(parsed in network for network in proxies)
            if len(self._exempt) < 10_000:  # proxies are few; the rest need not be kept
                self._exempt[address] = known
        return known


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n" + extra + b"connection: close"
        b"\r\n\r\n" + body
    )


class _GuardedProtocol(OneWriteProtocol):
    """uvicorn's httptools protocol (one write per response) with the deadlines and caps of
    `limits`."""

    limits: ClassVar[ConnectionLimits]
    counter: ClassVar[ConnectionCounter]
    refusal: ClassVar[bytes]
    too_large: ClassVar[bytes] = _response(
        b"431 Request Header Fields Too Large", b'{"error":"request head too large"}'
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = False  # admitted, and counted under `_key` until it is lost
        self._key: str | None = None
        self._refusing = False  # refused: waiting for its request to answer 503
        self._lingering = False  # answered: dropping what comes until the client closes
        self._phase = _HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body_bytes = 0
        self._body_started = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        counter = self.counter
        key = counter.key_for(self.client[0] if self.client else None)
        if not counter.admit(key):
            # Answered once its request is read: closed with the request unread, the
            # kernel would reset the connection and the client might never see the 503.
            if counter.refusing < REFUSING:
                counter.refusing += 1
                self._refusing = True
                self._arm(REFUSAL_WAIT, transport.abort)
            else:
                transport.abort()
            return
        self._counted, self._key = True, key
        self._arm(self.limits.head_timeout, self._head_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refusing:
            self._refusing = False
            self.counter.refusing -= 1
        if self._counted:
            self._counted = False
            self.counter.release(self._key)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._refusing:
            self._close_with(self.refusal)
            return
        if self._phase != _BODY:
            self._head_bytes += len(data)
        super().data_received(data)
        phase = self._phase
        if phase == _HEAD:
            if self._head_bytes > self.limits.max_head_bytes:
                self._close_with(self.too_large)
            elif self._timer is None:
                self._arm(self.limits.head_timeout, self._head_overdue)
        elif phase == _BODY and self._timer is None:
            self._body_started = self.loop.time()
            self._arm(self.limits.body_timeout, self._body_overdue)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD

    def on_headers_complete(self) -> None:
        if self._lingering:
            return
        limit = self.limits.max_head_bytes
        # What came since the request began bounds its head: only past the limit is it
        # measured (a whole request, head and body, often arrives in one read).
        if self._head_bytes > limit and self._head_size() > limit:
            self._close_with(self.too_large)
            return
        self._disarm()
        self._phase = _BODY
        self._body_bytes = 0
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        if self._lingering:
            return
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._lingering:
            return
        self._disarm()
        self._phase = _DONE
        self._head_bytes = 0
        super().on_message_complete()

    def _arm(self, delay: float, action: Callable[[], None]) -> None:
        self._timer = self.loop.call_later(delay, action)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_overdue(self) -> None:
        self._timer = None
        if self._phase == _HEAD:
            self.transport.abort()

    def _body_overdue(self) -> None:
        self._timer = None
        if self._phase != _BODY:
            return
        limits = self.limits
        if self.flow.read_paused:  # the app has not taken what came: not the client's doing
            self._arm(limits.body_timeout, self._body_overdue)
            return
        elapsed = self.loop.time() - self._body_started
        allowed = limits.body_timeout + self._body_bytes / limits.body_min_rate
        if elapsed >= allowed:
            self.transport.abort()
        else:  # it is progressing: look again when what it has sent stops covering it
            self._arm(allowed - elapsed, self._body_overdue)

    def _close_with(self, response: bytes) -> None:
        """Answer, then read and drop what the client still sends until it closes or the
        wait is over: closed with data unread, the kernel would reset the connection and
        the client might never see the answer."""
        self._disarm()
        self._phase = _DONE
        self._lingering = True
        transport = self.transport
        if not transport.is_closing():
            transport.write(response)
            if transport.can_write_eof():
                transport.write_eof()
            self._arm(REFUSAL_WAIT, transport.abort)


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that applies `limits` to its server."""
    refusal = _response(
        b"503 Service Unavailable",
        b'{"error":"too many connections, retry later"}',
        b"retry-after: " + str(limits.retry_after).encode() + b"\r\n",
    )
    attributes = {"limits": limits, "counter": ConnectionCounter(limits), "refusal": refusal}
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), attributes)
