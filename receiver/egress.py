"""Fetching URLs a provider gave us: only from public addresses, checked after resolution.

A result URL comes from a provider, so a provider (or whoever controls the CDN name it
points at) chooses where we connect. Left alone, that reaches the loopback admin API,
the cloud metadata service or the private network. Every connection therefore resolves
the host itself, refuses it if ANY resolved address is not public (loopback, private,
link-local, unspecified, multicast, reserved, shared CGNAT space, documentation and
benchmark ranges, and the IPv6 forms that carry such an IPv4 address: mapped,
compatible, 6to4, NAT64), and then connects to the very address it checked. No second
lookup happens, so a DNS answer that changes between check and connect (rebinding)
cannot slip through, while the Host header, TLS SNI and certificate checks still use
the URL's name. Every spelling of an address (`2130706433`, `127.1`, `0x7f000001`,
`[::ffff:127.0.0.1]`, `localhost`) lands on the same check because the check sees what
the resolver made of it. Redirects are new requests, so each hop is checked anew.

`RECEIVER_FETCH_ALLOW_NETWORKS` lists networks that are allowed anyway (a CDN on the
private network, the simulator on 127.0.0.1). Proxy variables are ignored here: a proxy
would resolve the name itself, past the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from receiver.errors import GiveUp
from receiver.ratelimit import Network

if TYPE_CHECKING:
    import ssl

    import httpx

__all__ = ["Egress", "FetchRefused", "Resolver", "refusal", "system_resolve"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to, as text ("127.0.0.1", "fe80::1%eth0")
Resolver = Callable[[str, int], Awaitable[list[str]]]

_n = ipaddress.ip_network
# IANA's special-purpose registries: what is not globally reachable, by why.
_IPV4_SPECIAL: tuple[tuple[Network, str], ...] = (
    (_n("0.0.0.0/8"), "unspecified"),
    (_n("10.0.0.0/8"), "private"),
    (_n("100.64.0.0/10"), "shared (CGNAT)"),
    (_n("127.0.0.0/8"), "loopback"),
    (_n("169.254.0.0/16"), "link-local"),
    (_n("172.16.0.0/12"), "private"),
    (_n("192.0.0.0/24"), "reserved"),
    (_n("192.0.2.0/24"), "documentation"),
    (_n("192.88.99.0/24"), "reserved"),
    (_n("192.168.0.0/16"), "private"),
    (_n("198.18.0.0/15"), "benchmarking"),
    (_n("198.51.100.0/24"), "documentation"),
    (_n("203.0.113.0/24"), "documentation"),
    (_n("224.0.0.0/4"), "multicast"),
    (_n("240.0.0.0/4"), "reserved"),
)
_IPV6_SPECIAL: tuple[tuple[Network, str], ...] = (
    (_n("::/128"), "unspecified"),
    (_n("::1/128"), "loopback"),
    (_n("64:ff9b:1::/48"), "private (local NAT64)"),
    (_n("2001::/23"), "reserved"),  # protocol assignments, Teredo among them
    (_n("2001:db8::/32"), "documentation"),
    (_n("3fff::/20"), "documentation"),
    (_n("fc00::/7"), "private"),
    (_n("fe80::/10"), "link-local"),
    (_n("fec0::/10"), "site-local"),
    (_n("ff00::/8"), "multicast"),
)
_GLOBAL_UNICAST = _n("2000::/3")
# IPv6 prefixes whose low 32 bits are an IPv4 address the packet ends up at.
_MAPPED = _n("::ffff:0:0/96")
_NAT64 = _n("64:ff9b::/96")
_V4_IN_LOW_BITS = (_MAPPED, _NAT64, _n("::/96"), _n("::ffff:0:0:0/96"))  # the last two deprecated


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, compatible, translated, NAT64 or 6to4 address carries."""
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in _V4_IN_LOW_BITS) and int(address) > 1:  # not ::, ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _special(address: Address) -> str | None:
    table = _IPV4_SPECIAL if address.version == 4 else _IPV6_SPECIAL
    for network, why in table:
        if address in network:
            return why
    if address.version == 6 and address not in _GLOBAL_UNICAST:
        return "reserved"  # not allocated for global unicast
    return None


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why `address` may not be fetched from (None: it may), unless `allowed` covers it.

    An IPv6 address carrying an IPv4 one is judged by both: `::ffff:10.0.0.1` is private.
    """
    inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if any(a in network for network in allowed for a in (address, inner) if a is not None):
        return None
    if inner is not None:
        why = _special(inner)
        if why is not None:
            return f"{address} ({inner}) is {why}"
        if address in _MAPPED or address in _NAT64:  # the public IPv4 address itself
            return None
    why = _special(address)
    return None if why is None else f"{address} is {why}"


class FetchRefused(GiveUp):
    """The URL's host is, or resolves to, an address we do not fetch from."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `getaddrinfo` gives for `host` (TCP), in its order, without repeats."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(_text(info[4]) for info in found))


def _text(sockaddr: tuple[Any, ...]) -> str:
    """An address from a sockaddr, with the zone of a scoped IPv6 one (`fe80::1%2`)."""
    if len(sockaddr) == 4 and sockaddr[3]:
        return f"{sockaddr[0]}%{sockaddr[3]}"
    return str(sockaddr[0])


class Egress:
    """Where fetches of provider-given URLs may connect: `vet` checks, `client` enforces."""

    def __init__(
        self,
        allowed: Sequence[Network] = (),
        resolve: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,  # None: httpx's default (certifi's CAs)
    ):
        self.allowed = tuple(allowed)
        self.resolve = resolve
        self._ssl = ssl_context

    async def vet(self, host: str, port: int) -> list[str]:
        """Resolve `host`; its addresses if every one may be fetched from, else FetchRefused.

        OSError when it resolves to nothing (a lookup failure may pass: it is retried).
        """
        answers = await self.resolve(host, port)
        if not answers:
            raise OSError(f"{host} resolves to no address")
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)  # a zone id (fe80::1%eth0) is kept
            except ValueError:
                raise FetchRefused(f"{host} resolves to {answer!r}, not an address") from None
            why = refusal(address, self.allowed)
            if why is not None:
                raise FetchRefused(
                    f"{why}, not a public address (RECEIVER_FETCH_ALLOW_NETWORKS can allow it)"
                )
        return answers

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An `httpx.AsyncClient(**options)` that connects only where `vet` allows."""
        from receiver.egress_transport import vetted_client

        if self._ssl is None:  # loading the CA bundle costs tens of ms: once per Egress
            import httpx

            self._ssl = httpx.create_ssl_context()
        return vetted_client(self, self._ssl, **options)
