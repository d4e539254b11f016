"""Fetches of provider-given URLs: public addresses only, checked after resolution, pinned.

The servers are real HTTP(S) servers on loopback that record every request; the check
runs for real, with the system resolver or, where a name must resolve to a chosen
address, a resolver function handed to `Egress` in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from downstream import Downstream, Reply, Seen, downstream

from receiver.builtins.download import DownloadFailed, DownloadRefused, fetch_file
from receiver.builtins.settings import DownloadSettings
from receiver.egress import Egress, refusal

VIDEO = bytes(range(256)) * 16
SETTINGS = DownloadSettings()
EVERYWHERE = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]


def _video(seen: Seen) -> Reply:
    return Reply(body=VIDEO, headers={"content-type": "video/mp4"})


def _net(*texts: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(text) for text in texts]


class _Resolver:
    """Answers each lookup with the next list in `answers` (the last one repeats)."""

    def __init__(self, *answers: list[str]):
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


class TestRefusal:
    """Every address that is not public is refused with its reason; public ones pass."""

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("192.0.0.8", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fe80::1%eth0", "link-local"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "reserved"),  # Teredo
            ("100::1", "reserved"),  # discard-only
            ("4000::1", "reserved"),  # outside global unicast
            ("::ffff:127.0.0.1", "(127.0.0.1) is loopback"),
            ("::ffff:10.0.0.1", "(10.0.0.1) is private"),
            ("::ffff:169.254.169.254", "(169.254.169.254) is link-local"),
            ("::ffff:0:a00:1", "(10.0.0.1) is private"),  # IPv4-translated
            ("::10.0.0.1", "(10.0.0.1) is private"),  # IPv4-compatible
            ("::8.8.8.8", "reserved"),  # IPv4-compatible: deprecated, whatever it carries
            ("64:ff9b::a00:1", "(10.0.0.1) is private"),  # NAT64
            ("64:ff9b::7f00:1", "(127.0.0.1) is loopback"),
            ("64:ff9b:1::a00:1", "private (local NAT64)"),
            ("2002:a9fe:a9fe::1", "(169.254.169.254) is link-local"),  # 6to4
            ("2002:6440:1::", "(100.64.0.1) is shared (CGNAT)"),
        ],
    )
    def test_not_public_is_refused(self, text: str, why: str) -> None:
        """The reason names the kind of address (and the IPv4 one an IPv6 form carries)."""
        found = refusal(ipaddress.ip_address(text))
        assert found is not None and found.endswith(why), found

    @pytest.mark.parametrize(
        "text",
        [
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",  # just below CGNAT
            "100.128.0.0",  # just above
            "172.32.0.1",  # just above 172.16/12
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",  # the public address itself
            "64:ff9b::808:808",  # NAT64 of a public address: how IPv6-only hosts reach IPv4
            "2002:808:808::1",
        ],
    )
    def test_public_passes(self, text: str) -> None:
        """Globally reachable unicast addresses are not refused."""
        assert refusal(ipaddress.ip_address(text)) is None

    def test_allowed_networks_pass_and_only_them(self) -> None:
        """An allowed network covers its addresses and their IPv6 forms, nothing more."""
        allowed = _net("10.0.0.0/8", "fd00::/8")
        assert [None, None, None] == [
            refusal(ipaddress.ip_address(a), allowed)
            for a in ("10.9.9.9", "::ffff:10.1.1.1", "fd00::5")
        ]
        assert "192.168.0.1 is private" == refusal(ipaddress.ip_address("192.168.0.1"), allowed)


# (URL host, family of the server it would reach); all of them are this machine.
SPELLINGS = [
    ("127.0.0.1", 4),
    ("127.1", 4),
    ("127.0.1", 4),
    ("2130706433", 4),
    ("0x7f000001", 4),
    ("0x7f.1", 4),
    ("0", 4),
    ("0.0.0.0", 4),
    ("localhost", 4),
    ("LocalHost", 4),
    ("[::ffff:127.0.0.1]", 4),
    ("[::ffff:7f00:1]", 4),
    ("[0:0:0:0:0:ffff:127.0.0.1]", 4),
    ("[::1]", 6),
    ("[::]", 6),
]
# Forms that reach nothing here, refused all the same for what they carry.
CARRIERS = ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "[fe80::1]"]
# Forms the system resolver (or httpx) does not take here: never fetched either way.
UNRESOLVED = ["127.0.0.1.", "localhost.", "[fe80::1%25lo]", "0177.0.0.1"]


@dataclasses.dataclass
class _Machine:
    """A recording file server on 127.0.0.1 and one on ::1."""

    servers: dict[int, Downstream]

    def url(self, host: str, family: int) -> str:
        return f"http://{host}:{self.servers[family].url.rsplit(':', 1)[1]}/v.mp4"

    @property
    def seen(self) -> list[Seen]:
        return [seen for server in self.servers.values() for seen in server.seen]


@contextlib.asynccontextmanager
async def _machine() -> AsyncIterator[_Machine]:
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no ::1")
    async with downstream(_video) as v4, downstream(_video, host="::1") as v6:
        yield _Machine({4: v4, 6: v6})


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class TestSpellings:
    """Every spelling of an internal address is refused by default, and never contacted."""

    @pytest.mark.parametrize(("host", "family"), SPELLINGS)
    async def test_refused_by_default(self, tmp_path: Path, host: str, family: int) -> None:
        """The fetch is refused after resolution, naming the address, and nothing is written."""
        async with _machine() as machine:
            url = machine.url(host, family)
            with pytest.raises(DownloadRefused, match="not a public address"):
                await fetch_file(Egress(), url, tmp_path / "d", "result", SETTINGS)
            assert [] == machine.seen
        assert [] == list(tmp_path.rglob("*.mp4"))

    @pytest.mark.parametrize(("host", "family"), SPELLINGS)
    async def test_reached_when_allowed(self, tmp_path: Path, host: str, family: int) -> None:
        """The same spellings do reach the server when every network is allowed (the control)."""
        async with _machine() as machine:
            url = machine.url(host, family)
            stored = await fetch_file(Egress(EVERYWHERE), url, tmp_path / "d", "result", SETTINGS)
            assert ["/v.mp4"] == [seen.path for seen in machine.seen]
        assert VIDEO == Path(stored.path).read_bytes()

    @pytest.mark.parametrize("host", CARRIERS)
    async def test_ipv6_forms_carrying_loopback_are_refused(
        self, tmp_path: Path, host: str
    ) -> None:
        """Compatible, NAT64, 6to4 and link-local forms are refused before any connection."""
        async with _machine() as machine:
            url = machine.url(host, 4)
            with pytest.raises(DownloadRefused, match="not a public address"):
                await fetch_file(Egress(), url, tmp_path / "d", "result", SETTINGS)
            assert [] == machine.seen

    @pytest.mark.parametrize("host", UNRESOLVED)
    async def test_unresolvable_spellings_fetch_nothing(self, tmp_path: Path, host: str) -> None:
        """Trailing dots, zone ids and octal quads fail here before any connection."""
        async with _machine() as machine:
            url = machine.url(host, 4)
            with pytest.raises(DownloadFailed):
                await fetch_file(Egress(), url, tmp_path / "d", "result", SETTINGS)
            assert [] == machine.seen


class TestResolution:
    """The check runs on every resolved address, and the connection goes to a checked one."""

    async def test_one_internal_answer_refuses_the_host(self, tmp_path: Path) -> None:
        """A name answering an allowed and a private address is refused: every answer counts."""
        resolver = _Resolver(["127.0.0.1", "10.0.0.1"])
        async with downstream(_video) as files:
            port = files.url.rsplit(":", 1)[1]
            with pytest.raises(DownloadRefused, match=r"10\.0\.0\.1 is private"):
                await fetch_file(
                    Egress(_net("127.0.0.1/32"), resolver),
                    f"http://files.test:{port}/v.mp4",
                    tmp_path,
                    "result",
                    SETTINGS,
                )
        assert [] == files.seen

    async def test_connects_to_the_checked_address_with_the_name_as_host(
        self, tmp_path: Path
    ) -> None:
        """A name only our resolver knows is fetched: one lookup, Host header kept."""
        resolver = _Resolver(["127.0.0.1"])
        async with downstream(_video) as files:
            port = files.url.rsplit(":", 1)[1]
            stored = await fetch_file(
                Egress(_net("127.0.0.0/8"), resolver),
                f"http://files.test:{port}/v.mp4",
                tmp_path,
                "result",
                SETTINGS,
            )
        assert ["files.test"] == resolver.asked
        assert [f"files.test:{port}"] == [seen.headers["host"] for seen in files.seen]
        assert VIDEO == Path(stored.path).read_bytes()

    async def test_a_redirect_is_checked_again(self, tmp_path: Path) -> None:
        """A same-origin redirect whose name now resolves to a refused address is not followed."""
        resolver = _Resolver(["127.0.0.1"], ["127.0.0.2"])  # the name rebinds between hops

        def first(seen: Seen) -> Reply:
            return Reply(status=302, headers={"location": "/real/v.mp4"})

        async with downstream(first) as files:
            port = int(files.url.rsplit(":", 1)[1])
            async with downstream(_video, host="127.0.0.2", port=port) as internal:
                with pytest.raises(DownloadRefused, match=r"127\.0\.0\.2 is loopback"):
                    await fetch_file(
                        Egress(_net("127.0.0.1/32"), resolver),
                        f"http://files.test:{port}/out/v.mp4",
                        tmp_path,
                        "result",
                        SETTINGS,
                    )
        assert (["/out/v.mp4"], []) == ([s.path for s in files.seen], internal.seen)
        assert ["files.test", "files.test"] == resolver.asked


@dataclasses.dataclass
class _Certificate:
    cert: Path
    key: Path

    def trusted(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def _certificate(directory: Path, name: str) -> _Certificate:
    """A self-signed certificate for `name` (made with the openssl command)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return _Certificate(cert, key)


@contextlib.asynccontextmanager
async def _tls_server(certificate: _Certificate, names: list[str]) -> AsyncIterator[int]:
    """An HTTPS server answering one video per connection; `names` gets each SNI name."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)

    def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name or "")

    context.sni_callback = sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\nconnection: close\r\n"
                + f"content-length: {len(VIDEO)}\r\n\r\n".encode()
                + VIDEO
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class TestTLS:
    """Over HTTPS the vetted address is dialled while SNI and the certificate check use the name."""

    async def test_sni_and_verification_use_the_urls_name(self, tmp_path: Path) -> None:
        """The certificate for files.test is accepted, and the server saw files.test as SNI."""
        certificate = _certificate(tmp_path, "files.test")
        names: list[str] = []
        async with _tls_server(certificate, names) as port:
            egress = Egress(_net("127.0.0.0/8"), _Resolver(["127.0.0.1"]), certificate.trusted())
            stored = await fetch_file(
                egress, f"https://files.test:{port}/v.mp4", tmp_path / "d", "result", SETTINGS
            )
        assert ["files.test"] == names
        assert VIDEO == Path(stored.path).read_bytes()

    async def test_a_certificate_for_another_name_is_refused(self, tmp_path: Path) -> None:
        """A server whose certificate names another host fails the fetch (retried, not stored)."""
        certificate = _certificate(tmp_path, "other.test")
        names: list[str] = []
        async with _tls_server(certificate, names) as port:
            egress = Egress(_net("127.0.0.0/8"), _Resolver(["127.0.0.1"]), certificate.trusted())
            with pytest.raises(DownloadFailed, match="ConnectError"):
                await fetch_file(
                    egress, f"https://files.test:{port}/v.mp4", tmp_path / "d", "result", SETTINGS
                )
        assert ["files.test"] == names
        assert [] == list((tmp_path / "d").rglob("*.mp4"))


class _Firehose:
    """A server answering every request with a huge body, counting what it managed to send."""

    def __init__(self, content_type: str, total: int = 1024**3):
        self.content_type = content_type
        self.total = total
        self.sent = 0
        self.cut_off = False
        self.finished = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"\0" * 65536
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                f"HTTP/1.1 200 OK\r\ncontent-type: {self.content_type}\r\n"
                f"content-length: {self.total}\r\n\r\n".encode()
            )
            while self.sent < self.total:
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        except ConnectionError:
            self.cut_off = True
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.finished.set()


class TestResponseHead:
    """The content type is judged from the response head: a refused body is never read."""

    async def test_wrong_type_closes_the_connection_before_the_body(self, tmp_path: Path) -> None:
        """A 1 GiB text/html answer is refused, and the server is cut off within its buffers."""
        firehose = _Firehose("text/html")
        server = await asyncio.start_server(firehose.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(DownloadRefused, match="content type text/html is not allowed"):
                await fetch_file(
                    Egress(_net("127.0.0.1/32")),
                    f"http://127.0.0.1:{port}/v.mp4",
                    tmp_path,
                    "result",
                    DownloadSettings(max_bytes=2 * 1024**3),
                )
            await asyncio.wait_for(firehose.finished.wait(), 10)
        finally:
            server.close()
            await server.wait_closed()
        assert firehose.cut_off
        # What the socket buffers took: far below the body's gigabyte.
        assert firehose.sent < 64 * 1024**2, firehose.sent
        assert [] == [p for p in tmp_path.rglob("*") if p.is_file()]

    async def test_declared_length_over_the_cap_is_refused_from_the_head(
        self, tmp_path: Path
    ) -> None:
        """A Content-Length over the cap is refused without reading the body."""
        firehose = _Firehose("video/mp4")
        server = await asyncio.start_server(firehose.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(DownloadRefused, match="over RECEIVER_DOWNLOAD_MAX_BYTES"):
                await fetch_file(
                    Egress(_net("127.0.0.1/32")),
                    f"http://127.0.0.1:{port}/v.mp4",
                    tmp_path,
                    "result",
                    DownloadSettings(max_bytes=1024**2),
                )
            await asyncio.wait_for(firehose.finished.wait(), 10)
        finally:
            server.close()
            await server.wait_closed()
        assert firehose.cut_off and firehose.sent < 64 * 1024**2, firehose.sent
