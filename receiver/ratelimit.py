"""Failed authentication is rate limited, per client address and per token.

On the hook routes every refusal counts, not only failed authentication (receiver.refusals).

Each key (an address, or a token's digest) has a bucket of `burst` failures that
refills at `rate` per second. While an address's bucket is empty, every request from
it gets 429 before any work is done. While a token's bucket is empty, failures on it
get 429 instead of 401 and are not written to the quarantine, but a request that does
prove itself still goes through: an attacker hammering a job's URL must not be able to
lock its real provider out. Memory is bounded: the least recently failed keys go first.

`X-Forwarded-For` is believed only when the direct peer is in RECEIVER_TRUSTED_PROXIES;
then the client is the right-most address in it (all its lines read as one list) that is
not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from receiver.errors import ConfigError

__all__ = ["FailureLimiter", "Network", "client_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str, setting: str = "RECEIVER_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.168.1.7` as networks; ConfigError naming `setting`."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{setting}: {item!r} is not an address or network") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: str, proxies: Iterable[Network]) -> bool:
    parsed = _address(address)
    return parsed is not None and any(parsed in network for network in proxies)


def client_address(scope: Mapping[str, Any], proxies: tuple[Network, ...]) -> str | None:
    """The caller's address for an ASGI `scope`: the peer's, or what trusted proxies forwarded.

    The one place this rule lives: every route that budgets or records a caller asks here.
    """
    client = scope.get("client")
    peer: str | None = client[0] if client else None
    if peer is None or not proxies or not _trusted(peer, proxies):
        return peer
    return _forwarded_client(peer, _forwarded_hops(scope.get("headers", ())), proxies)


def _forwarded_hops(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every X-Forwarded-For hop, in order, from all its lines; empty elements skipped.

    HTTP makes repeated lines one comma-joined list (RFC 9110 5.3), and a proxy may append
    a line of its own rather than extend the first, which the caller writes.
    """
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops += [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
    return hops


def _forwarded_client(peer: str, hops: list[str], proxies: tuple[Network, ...]) -> str:
    """The right-most hop that is not a trusted proxy.

    The peer if every hop is trusted, or if the chain is broken: what we cannot parse we do
    not believe.
    """
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            return peer
        if not any(parsed in network for network in proxies):
            return str(parsed)
    return peer


class FailureLimiter:
    """Token buckets of authentication failures, keyed by address or token digest."""

    def __init__(self, *, burst: int = 20, rate: float = 0.5, max_keys: int = 100_000):
        self.burst = float(burst)
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _level(self, key: str, at: float) -> float:
        tokens, then = self._buckets.get(key, (self.burst, at))
        return min(self.burst, tokens + (at - then) * self.rate)

    def retry_after(self, key: str | None, at: float) -> int | None:
        """Seconds until `key` may fail again, or None if it is not limited now."""
        if key is None or key not in self._buckets:
            return None
        level = self._level(key, at)
        if level >= 1.0:
            return None
        return max(1, math.ceil((1.0 - level) / self.rate))

    def failed(self, key: str | None, at: float) -> None:
        """Take one failure from `key`'s bucket."""
        if key is None:
            return
        level = self._level(key, at)
        self._buckets[key] = (level - 1.0, at)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
