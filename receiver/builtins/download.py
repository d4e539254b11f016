"""`download`: copy a succeeded job's result (and preview) to local disk before the URL expires.

Each file is streamed into `<dir>/<job id>/.<name>-<url digest>.part`, hashed as it
arrives, checked against the size cap and the allowed content types, flushed to disk,
then renamed to `<dir>/<job id>/<name><ext>` in one atomic step. The final name only
ever holds a complete file. A retry after a broken transfer resumes the part file with
an HTTP Range request when the server allows it, else starts it again; a part file is
never reused for another URL. The job then lists the copy under `files` (path, SHA-256,
size, content type), so a later retry, or a duplicate event, does not fetch it again.
Redirects are followed only within the same scheme, host and port.

The URL is a provider's choice, so the fetch goes through an `Egress`: every hop's host
is resolved and refused unless all its addresses are public (or in
RECEIVER_FETCH_ALLOW_NETWORKS), and the connection goes to the address checked. The
status, content type and length are judged from the response head before any of the
body is read. Files are created 0600 and folders 0700: results may be private media.
A refusal (address, type, size, URL) raises `DownloadRefused`: the delivery is dead at
once, since no retry would change it; a network failure is retried.

Provider links expire. A URL answered 403, 404 or 410 (`ResultExpired`) makes the attempt
ask the provider's status API once (`renew`, the poller's) for fresh links; the answer is
recorded as a renewal event, so the job's URLs change only by the provider's own word,
and the file is fetched from the fresh URL in the same attempt. Once per attempt: a
fresh link that is expired too, or a provider without a status API, fails the attempt,
which is retried as any other failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from receiver.builtins.outbound import origin
from receiver.builtins.settings import DownloadSettings
from receiver.dispatch import Registry
from receiver.egress import Egress, FetchRefused
from receiver.errors import GiveUp, ReceiverError, StoreUnavailable
from receiver.models import Event, Job, StoredFile, now
from receiver.store.base import Store

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DOWNLOAD_HANDLER",
    "DownloadFailed",
    "DownloadRefused",
    "Renew",
    "ResultExpired",
    "fetch_file",
    "install_download",
]

DOWNLOAD_HANDLER = "builtin.download"
_MAX_REDIRECTS = 5
_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# What a CDN answers for a signed link past its expiry (S3 and CloudFront: 403).
_EXPIRED = frozenset({403, 404, 410})
_EXTENSIONS = {"video/mp4": ".mp4", "image/jpeg": ".jpg", "image/gif": ".gif", "audio/mpeg": ".mp3"}


class DownloadFailed(Exception):
    """A file could not be fetched (network, server error); the delivery is retried."""


class DownloadRefused(DownloadFailed, GiveUp):
    """A file was refused (address, host, type, size, URL); no later attempt is made."""


class ResultExpired(DownloadFailed):
    """The server says the link is gone (403, 404, 410): the provider may give a fresh one."""


# Ask the provider about a succeeded job once more; the job with fresh URLs, or None.
Renew = Callable[[Job], Awaitable[Job | None]]


def _allowed_type(content_type: str, allowed: list[str]) -> bool:
    return any(
        content_type.startswith(entry) if entry.endswith("/") else content_type == entry
        for entry in allowed
    )


def _extension(content_type: str, url: httpx.URL) -> str:
    """The file extension: from the content type when known, else from the URL's path."""
    known = _EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type)
    if known and content_type != "application/octet-stream":
        return known
    suffix = Path(url.path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents 0700; existing ones are left as they are."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def _open_part(part: Path) -> BinaryIO:
    """The part file for appending, created 0600 (and made so if an older run left it wider)."""
    fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Transfer:
    """One attempt at one file: the open response, where the part file stands, the hash."""

    def __init__(self, part: Path):
        self.part = part
        self.sha = hashlib.sha256()
        self.size = 0

    def resume_from(self) -> int:
        """Hash what an earlier attempt left, and say where to resume (0: from scratch)."""
        if not self.part.is_file():
            return 0
        with self.part.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                self.sha.update(chunk)
                self.size += len(chunk)
        return self.size

    def restart(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.part.unlink(missing_ok=True)


async def _open(
    client: httpx.AsyncClient, url: httpx.URL, headers: dict[str, str], timeout: float
) -> httpx.Response:
    """Send the GET, following redirects within the same origin only; the caller closes it."""
    for _ in range(_MAX_REDIRECTS + 1):
        request = client.build_request("GET", url, headers=headers, timeout=timeout)
        response = await client.send(request, stream=True, follow_redirects=False)
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        await response.aclose()
        target = url.join(response.headers.get("location", ""))
        if not _same_origin(url, target):
            raise DownloadRefused(f"{origin(url)} redirected to another host; not followed")
        url = target
    raise DownloadFailed(f"{origin(url)} redirected more than {_MAX_REDIRECTS} times")


async def fetch_file(
    egress: Egress, url: str, directory: Path, name: str, settings: DownloadSettings
) -> StoredFile:
    """Fetch `url` into `directory/<name><ext>` atomically; DownloadFailed when it cannot."""
    import httpx

    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise DownloadRefused("the result URL is not a valid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise DownloadRefused("only http(s) result URLs are downloaded")
    if settings.hosts and target.host not in settings.hosts:
        raise DownloadRefused(f"{origin(target)} is not in RECEIVER_DOWNLOAD_HOSTS")
    async with egress.client() as client:
        return await _fetch(client, url, target, directory, name, settings)


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    target: httpx.URL,
    directory: Path,
    name: str,
    settings: DownloadSettings,
) -> StoredFile:
    import httpx

    _private_dirs(directory)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    transfer = _Transfer(directory / f".{name}-{digest}.part")
    offset = await asyncio.to_thread(transfer.resume_from)
    headers = {"user-agent": "receiver", "accept-encoding": "identity"}
    if offset:
        headers["range"] = f"bytes={offset}-"
    try:
        response = await _open(client, target, headers, settings.timeout)
    except FetchRefused as exc:
        raise DownloadRefused(f"{origin(target)} refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"{origin(target)} unreachable: {type(exc).__name__}") from None
    try:
        stored = await _receive(response, transfer, target, directory, name, settings)
    except httpx.HTTPError as exc:
        # The part file keeps what arrived: the retry resumes from there.
        raise DownloadFailed(f"{origin(target)} broke off: {type(exc).__name__}") from None
    finally:
        await response.aclose()
    return msgspec.structs.replace(stored, url=url)  # as the provider gave it, for comparisons


async def _receive(
    response: httpx.Response,
    transfer: _Transfer,
    url: httpx.URL,
    directory: Path,
    name: str,
    settings: DownloadSettings,
) -> StoredFile:
    total: int | None = None
    if response.status_code == 206 and transfer.size:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None or int(match.group(1)) != transfer.size:
            transfer.restart()  # a range we did not ask for: start over on the next attempt
            raise DownloadFailed(f"{origin(url)} answered a range that does not fit")
        total = None if match.group(3) == "*" else int(match.group(3))
    elif response.status_code == 200:
        transfer.restart()  # the server ignored the Range header (or there was none)
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
    elif response.status_code in _EXPIRED:
        transfer.restart()  # what came from a dead link is of no use to a fresh one
        raise ResultExpired(f"{origin(url)} answered {response.status_code} (the link expired)")
    else:
        if response.status_code == 416:
            transfer.restart()
        raise DownloadFailed(f"{origin(url)} answered {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not _allowed_type(content_type, settings.content_types):
        raise DownloadRefused(f"content type {content_type or '(none)'} is not allowed")
    if total is not None and total > settings.max_bytes:
        raise DownloadRefused(f"{total} bytes is over RECEIVER_DOWNLOAD_MAX_BYTES")
    with _open_part(transfer.part) as handle:
        async for chunk in response.aiter_raw():  # as it arrives: a break keeps what came
            transfer.size += len(chunk)
            if transfer.size > settings.max_bytes:
                handle.close()
                transfer.restart()
                raise DownloadRefused("the file grew over RECEIVER_DOWNLOAD_MAX_BYTES")
            handle.write(chunk)
            transfer.sha.update(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    if total is not None and transfer.size != total:
        raise DownloadFailed(f"{origin(url)} sent {transfer.size} of {total} bytes")
    final = directory / f"{name}{_extension(content_type, url)}"
    os.replace(transfer.part, final)  # atomic: the final name never holds a partial file
    _fsync_dir(directory)
    return StoredFile(
        path=str(final.resolve()),
        sha256=transfer.sha.hexdigest(),
        size=transfer.size,
        content_type=content_type or None,
        url=str(url),
        stored_at=now(),
    )


class _Renewal:
    """The one status pull an attempt may make for fresh URLs, and the job it left."""

    def __init__(self, renew: Renew | None, job: Job):
        self.renew = renew
        self.job = job
        self.asked = False

    async def fresh_url(self, name: str, url: str, expired: ResultExpired) -> str:
        """A fresh URL for file `name`, whose `url` expired; DownloadFailed (retried later)
        when there is none."""
        if self.asked:
            raise DownloadFailed(f"{expired}; fresh links were asked for once in this attempt")
        self.asked = True
        provider = self.job.provider
        if self.renew is None:
            raise DownloadFailed(f"{expired}; no status API is asked for a fresh link here")
        try:
            renewed = await self.renew(self.job)
        except StoreUnavailable:
            raise
        except ReceiverError as exc:
            raise DownloadFailed(f"{expired}; no fresh link: {exc}") from None
        if renewed is not None:
            self.job = renewed
        fresh = _url_of(self.job, name)
        if fresh is None or fresh == url:
            raise DownloadFailed(f"{expired}; {provider}'s status API gave no fresh link")
        return fresh


def _url_of(job: Job, name: str) -> str | None:
    return job.result_url if name == "result" else job.preview_url


def install_download(
    registry: Registry,
    settings: DownloadSettings,
    egress: Egress,
    store: Store,
    renew: Renew | None = None,
) -> list[str]:
    """Register the handler when `RECEIVER_DOWNLOAD_DIR` is set; `renew` asks a provider
    for fresh links when one has expired."""
    if not settings.dir:
        return []
    root = Path(settings.dir)

    async def download(event: Event, job: Job) -> None:
        wanted = [("result", event.result_url)]
        if settings.preview:
            wanted.append(("preview", event.preview_url))
        renewal = _Renewal(renew, job)
        for name, given in wanted:
            # The job's link first: a renewal since this event replaced an expired one.
            url = _url_of(renewal.job, name) or given
            kept = job.files.get(name)
            if not url or (kept is not None and kept.url == url and Path(kept.path).is_file()):
                continue
            try:
                stored = await fetch_file(egress, url, root / job.id, name, settings)
            except ResultExpired as exc:
                fresh = await renewal.fresh_url(name, url, exc)
                try:
                    stored = await fetch_file(egress, fresh, root / job.id, name, settings)
                except ResultExpired as again:
                    raise ResultExpired(
                        f"{again}, the fresh link from the status API too"
                    ) from None
                stored = msgspec.structs.replace(stored, renewed_from=url)
            await store.save_file(job.id, name, stored)

    registry.on("succeeded", when=settings.accepts, name=DOWNLOAD_HANDLER)(download)
    return [DOWNLOAD_HANDLER]
