"""The download handler: streamed, checked, hashed, renamed atomically, and resumed on retry."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from downstream import Reply, Seen, downstream

from receiver.builtins import DOWNLOAD_HANDLER
from receiver.dispatch import Registry
from receiver.models import Job
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.testing import HandlerKit, Ran, handler_kit

VIDEO = bytes(range(256)) * 40  # 10 KiB that a truncation or misplaced range would change


def _video(seen: Seen) -> Reply:
    return Reply(body=VIDEO, headers={"content-type": "video/mp4"})


# The test servers are on loopback, which downloads refuse unless it is allowed.
LOOPBACK_ALLOWED = {"RECEIVER_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}


def _env(directory: Path, **extra: str) -> dict[str, str]:
    return {"RECEIVER_DOWNLOAD_DIR": str(directory), **LOOPBACK_ALLOWED, **extra}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file() and p.suffix == ".part")


async def _download(
    tmp_path: Path, respond: Callable[[Seen], Reply], **extra: str
) -> tuple[list[Seen], Ran, Job]:
    """Run one rixapi job's success through the handler; (requests seen, the run, the job)."""
    async with (
        downstream(respond) as files,
        handler_kit(tmp_path, handlers=Registry(), env=_env(tmp_path / "v", **extra)) as kit,
    ):
        job = await kit.job("rixapi")
        await kit.callback(
            job, "succeeded", result_url=files.url + "/out/video.mp4", preview_url=""
        )
        [run] = await kit.settle()
        stored = await kit.get(job)
    return files.seen, run, stored


class TestDownload:
    """A succeeded job's result is copied to disk and listed on the job."""

    async def test_result_is_stored_hashed_and_listed(self, tmp_path: Path) -> None:
        """The file has the exact bytes; the job shows its path, SHA-256, size and type."""
        _, run, job = await _download(tmp_path, _video)
        assert (DOWNLOAD_HANDLER, True, 1) == (run.handler, run.done, run.attempts)
        stored = job.files["result"]
        assert VIDEO == Path(stored.path).read_bytes()
        assert (hashlib.sha256(VIDEO).hexdigest(), len(VIDEO), "video/mp4") == (
            stored.sha256,
            stored.size,
            stored.content_type,
        )
        assert Path(stored.path) == (tmp_path / "v" / job.id / "result.mp4").resolve()
        assert [] == _leftovers(tmp_path / "v")

    async def test_resumes_a_broken_transfer_with_range(self, tmp_path: Path) -> None:
        """A transfer cut halfway is retried from where it stopped, and the file is whole."""

        def respond(seen: Seen) -> Reply:
            if "range" not in seen.headers:  # the first attempt breaks off after 3000 bytes
                return Reply(body=VIDEO, headers={"content-type": "video/mp4"}, cut_after=3000)
            start = int(seen.headers["range"].removeprefix("bytes=").rstrip("-"))
            return Reply(
                status=206,
                body=VIDEO[start:],
                headers={
                    "content-type": "video/mp4",
                    "content-range": f"bytes {start}-{len(VIDEO) - 1}/{len(VIDEO)}",
                },
            )

        seen, run, job = await _download(tmp_path, respond)
        assert [None, "bytes=3000-"] == [s.headers.get("range") for s in seen]
        assert (True, 2) == (run.done, run.attempts)
        stored = job.files["result"]
        assert VIDEO == Path(stored.path).read_bytes()
        assert hashlib.sha256(VIDEO).hexdigest() == stored.sha256
        assert [] == _leftovers(tmp_path / "v")

    async def test_a_server_ignoring_range_gives_a_whole_file(self, tmp_path: Path) -> None:
        """A 200 to a Range request restarts the file instead of appending to the part."""
        answers = iter([3000, None])

        def respond(seen: Seen) -> Reply:
            return Reply(body=VIDEO, headers={"content-type": "video/mp4"}, cut_after=next(answers))

        seen, run, job = await _download(tmp_path, respond)
        assert (True, "bytes=3000-") == (run.done, seen[1].headers.get("range"))
        assert VIDEO == Path(job.files["result"].path).read_bytes()
        assert hashlib.sha256(VIDEO).hexdigest() == job.files["result"].sha256

    async def test_no_final_file_while_the_transfer_is_broken(self, tmp_path: Path) -> None:
        """Every attempt breaking off leaves only the part file, never a corrupt result."""

        def respond(seen: Seen) -> Reply:
            return Reply(body=VIDEO, headers={"content-type": "video/mp4"}, cut_after=100)

        _, run, job = await _download(tmp_path, respond)
        assert "dead" == run.state.value
        assert {} == job.files
        names = sorted(p.name for p in (tmp_path / "v").rglob("*") if p.is_file())
        assert 1 == len(names) and names[0].endswith(".part")

    async def test_wrong_content_type_is_refused(self, tmp_path: Path) -> None:
        """An HTML page where a video was expected is not stored, nor asked for again."""
        html = Reply(body=b"<html>expired</html>", headers={"content-type": "text/html"})
        _, run, job = await _download(tmp_path, lambda seen: html)
        assert ("dead", 1) == (run.state.value, run.attempts)
        assert "content type text/html is not allowed" in (run.error or "")
        assert {} == job.files

    async def test_size_cap(self, tmp_path: Path) -> None:
        """A file over RECEIVER_DOWNLOAD_MAX_BYTES is refused and nothing is left on disk."""
        _, run, job = await _download(tmp_path, _video, RECEIVER_DOWNLOAD_MAX_BYTES="1000")
        assert ("dead", 1) == (run.state.value, run.attempts)
        assert "over RECEIVER_DOWNLOAD_MAX_BYTES" in (run.error or "")
        assert {} == job.files
        assert [] == _leftovers(tmp_path / "v")

    async def test_size_cap_without_content_length(self, tmp_path: Path) -> None:
        """A body that grows past the cap is cut off while streaming."""

        def respond(seen: Seen) -> Reply:
            # No Content-Length: the body ends when the connection closes.
            return Reply(body=VIDEO, headers={"content-type": "video/mp4", "content-length": ""})

        _, run, job = await _download(tmp_path, respond, RECEIVER_DOWNLOAD_MAX_BYTES="1000")
        assert "dead" == run.state.value
        assert "grew over RECEIVER_DOWNLOAD_MAX_BYTES" in (run.error or "")
        assert {} == job.files
        assert [] == _leftovers(tmp_path / "v")

    async def test_redirect_to_another_host_is_not_followed(self, tmp_path: Path) -> None:
        """Only same-origin redirects are followed."""
        async with downstream(_video) as other:
            moved = Reply(status=302, headers={"location": other.url + "/video.mp4"})
            _, run, _ = await _download(tmp_path, lambda seen: moved)
        assert [] == other.seen
        assert "redirected to another host" in (run.error or "")

    async def test_same_host_redirect_is_followed(self, tmp_path: Path) -> None:
        """A CDN-style redirect on the same origin is followed to the file."""

        def respond(seen: Seen) -> Reply:
            if seen.path == "/out/video.mp4":
                return Reply(status=302, headers={"location": "/real/video.mp4"})
            return _video(seen)

        seen, _, job = await _download(tmp_path, respond)
        assert ["/out/video.mp4", "/real/video.mp4"] == [s.path for s in seen]
        assert VIDEO == Path(job.files["result"].path).read_bytes()

    async def test_hosts_allowlist(self, tmp_path: Path) -> None:
        """With RECEIVER_DOWNLOAD_HOSTS set, another host is never contacted."""
        seen, run, _ = await _download(tmp_path, _video, RECEIVER_DOWNLOAD_HOSTS="cdn.example")
        assert [] == seen
        assert "not in RECEIVER_DOWNLOAD_HOSTS" in (run.error or "")

    async def test_result_and_preview_from_the_simulated_provider(self, tmp_path: Path) -> None:
        """The simulator's rixapi result and poster both land beside each other."""
        from receiver.simulator import run_simulator

        async with run_simulator() as sim:
            env = _env(tmp_path / "v", RECEIVER_RIXAPI_BASE_URL=sim.base_url("rixapi"))
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("rixapi")
                answer = await kit.trigger(job, "succeeded")
                assert 200 == answer.status_code, answer.text
                [run] = await kit.settle()
                stored = await kit.get(job)
        assert run.done
        assert ["preview", "result"] == sorted(stored.files)
        assert Path(stored.files["result"].path).read_bytes().startswith(b"\x00\x00\x00\x18ftyp")
        assert Path(stored.files["preview"].path).name == "preview.jpg"


INPUTS: dict[str, dict[str, Any]] = {
    "apiframe": {"prompt": "A colossal mech", "generation_type": "text2video"},
    "rixapi": {"prompt": "cat", "model": "gen3"},
    "runway_ai": {"endpoint": "generate-video", "prompt": "a fox", "duration": 5},
}


@contextlib.asynccontextmanager
async def _expiring(
    tmp_path: Path, expire_results: int, **extra: str
) -> AsyncIterator[tuple[RunningSimulator, HandlerKit]]:
    """The simulator with links that expire `expire_results` times, and a kit that downloads."""
    async with run_simulator(SimConfig(step_delay=0.01, expire_results=expire_results)) as sim:
        env = _env(tmp_path / "v", **extra)
        for provider in INPUTS:
            env[f"RECEIVER_{provider.upper()}_BASE_URL"] = sim.base_url(provider)
            env[f"RECEIVER_{provider.upper()}_API_KEY"] = "sim-key"
        async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
            yield sim, kit


async def _submit(sim: RunningSimulator, kit: HandlerKit, provider: str) -> str:
    """Submit a job through the receiver and wait until the simulator has told it all."""
    answer = await kit.client.post(
        kit.receiver.url + "/jobs",
        json={"provider": provider, "input": INPUTS[provider]},
        headers=kit.receiver.admin_headers,
    )
    assert 201 == answer.status_code, answer.text
    await sim.wait_idle()
    if provider == "rixapi":  # its final callback is confirmed by a status pull
        assert 1 == await kit.runtime.poller.run_once()
    job_id: str = answer.json()["id"]
    return job_id


def _links(sim: RunningSimulator) -> tuple[str | None, str | None]:
    """The task's result and preview links as its provider hands them out now."""
    [task] = sim.tasks()
    return task.result_url, task.preview_url


class TestExpiredLinks:
    """An expired result link costs one status pull for a fresh one, in the same attempt."""

    async def test_downloads_from_the_fresh_link_after_one_status_call(
        self, tmp_path: Path
    ) -> None:
        """The 410 makes one /fetch; the fresh link is recorded on the job by a renewal
        event (firing nothing) and fetched; the file says which link it came from."""
        async with _expiring(tmp_path, 1) as (sim, kit):
            job_id = await _submit(sim, kit, "apiframe")
            expired = (await kit.get(job_id)).result_url
            [run] = await kit.settle()
            job = await kit.get(job_id)
            events = await kit.runtime.store.list_events(job_id)
            fresh, _ = _links(sim)
            assert 1 == sim.status_calls("apiframe")
        assert (True, 1) == (run.done, run.attempts)
        assert expired != fresh
        assert fresh == job.result_url
        stored = job.files["result"]
        assert (fresh, expired) == (stored.url, stored.renewed_from)
        assert Path(stored.path).read_bytes().startswith(b"\x00\x00\x00\x18ftyp")
        assert ("renewal", "renewed", fresh) == (
            events[-1].source,
            events[-1].disposition.value,
            events[-1].result_url,
        )
        assert [] == _leftovers(tmp_path / "v")

    async def test_one_renewal_brings_result_and_preview(self, tmp_path: Path) -> None:
        """Both links expired: the result's 403 asks once, and the preview comes from the
        same answer (rixapi's confirming pull, before any fetch, renewed nothing)."""
        async with _expiring(tmp_path, 1) as (sim, kit):
            sim.config.expire_status = 403
            job_id = await _submit(sim, kit, "rixapi")
            confirmed = sim.status_calls("rixapi")
            [run] = await kit.settle()
            job = await kit.get(job_id)
            renewals = sim.status_calls("rixapi") - confirmed
            result, preview = _links(sim)
        assert (True, 1, 1) == (run.done, run.attempts, renewals)
        assert (result, preview) == (job.files["result"].url, job.files["preview"].url)
        assert (result, preview) == (job.result_url, job.preview_url)
        assert Path(job.files["preview"].path).name == "preview.jpg"

    async def test_a_link_still_expired_fails_the_attempt_without_asking_again(
        self, tmp_path: Path
    ) -> None:
        """The fresh link is expired too: the attempt fails after exactly one status call,
        nothing is stored, and the delivery waits for its retry."""
        async with _expiring(tmp_path, 2, RECEIVER_RETRY_BASE_DELAY="60") as (sim, kit):
            job_id = await _submit(sim, kit, "apiframe")
            await kit.runtime.dispatcher.drain(timeout=5)
            [run] = await kit.runs()
            job = await kit.get(job_id)
            fresh, _ = _links(sim)
            assert 1 == sim.status_calls("apiframe")
        assert ("pending", 1) == (run.state.value, run.attempts)
        assert "410 (the link expired), the fresh link from the status API too" in (run.error or "")
        assert ({}, fresh) == (job.files, job.result_url)

    async def test_the_retry_asks_once_more_and_succeeds(self, tmp_path: Path) -> None:
        """Each attempt may ask once: the second attempt's fresh link works."""
        async with _expiring(tmp_path, 2) as (sim, kit):
            job_id = await _submit(sim, kit, "apiframe")
            [run] = await kit.settle()
            job = await kit.get(job_id)
            fresh, _ = _links(sim)
            assert 2 == sim.status_calls("apiframe")
        assert (True, 2) == (run.done, run.attempts)
        assert fresh == job.files["result"].url

    async def test_a_provider_that_asked_for_a_pause_is_not_asked_again(
        self, tmp_path: Path
    ) -> None:
        """The status API's 429 with Retry-After fails the first attempt; the retries keep to
        the pause the provider asked for, as polls do, and make no status call."""
        async with _expiring(tmp_path, 1) as (sim, kit):
            job_id = await _submit(sim, kit, "apiframe")
            sim.config.status_error, sim.config.status_retry_after = 429, 30
            [run] = await kit.settle()
            job = await kit.get(job_id)
            assert 1 == sim.status_calls("apiframe")
        assert ("dead", 3, {}) == (run.state.value, run.attempts, job.files)
        assert "no fresh link: apiframe asked for a pause" in (run.error or "")

    async def test_a_provider_without_a_status_api_fails_saying_so(self, tmp_path: Path) -> None:
        """runway_ai answers the result at once and has nothing to ask: every attempt
        fails with the reason, and the delivery dies after the usual attempts."""
        async with _expiring(tmp_path, 1) as (sim, kit):
            job_id = await _submit(sim, kit, "runway_ai")
            [run] = await kit.settle()
            job = await kit.get(job_id)
            calls = sum(sim.status_calls(provider) for provider in INPUTS)
        assert ("dead", 3, 0) == (run.state.value, run.attempts, calls)
        assert "answered 410 (the link expired); no fresh link: runway_ai has no status API" in (
            run.error or ""
        )
        assert {} == job.files

    async def test_without_a_status_api_to_ask_the_attempt_fails_saying_why(
        self, tmp_path: Path
    ) -> None:
        """A provider that is not configured cannot be asked: each attempt fetches the dead
        link once and fails with the reason, until the delivery dies as usual."""
        seen, run, job = await _download(tmp_path, lambda seen: Reply(status=404))
        assert (3, "dead", {}) == (len(seen), run.state.value, job.files)
        assert "answered 404 (the link expired); no fresh link: RECEIVER_RIXAPI_BASE_URL" in (
            run.error or ""
        )


class TestInternalAddresses:
    """By default a result URL on an internal address is never fetched: dead at once, no retry."""

    @pytest.mark.parametrize(
        "host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "127.1"]
    )
    async def test_refused_and_never_contacted(self, tmp_path: Path, host: str) -> None:
        """The server is not contacted; the delivery is dead after one attempt, saying why."""
        env = {"RECEIVER_DOWNLOAD_DIR": str(tmp_path / "v")}
        async with (
            downstream(_video) as files,
            handler_kit(tmp_path, handlers=Registry(), env=env) as kit,
        ):
            port = files.url.rsplit(":", 1)[1]
            job = await kit.job("rixapi")
            url = f"http://{host}:{port}/out/video.mp4"
            await kit.callback(job, "succeeded", result_url=url, preview_url="")
            [run] = await kit.settle()
            stored = await kit.get(job)
        assert [] == files.seen
        assert ("dead", 1) == (run.state.value, run.attempts)
        assert re.search(r"127\.0\.0\.1\)? is loopback, not a public address", run.error or "")
        assert "RECEIVER_FETCH_ALLOW_NETWORKS can allow it" in (run.error or "")
        assert {} == stored.files

    async def test_only_the_allowed_networks_are_allowed(self, tmp_path: Path) -> None:
        """Allowing 10.0.0.0/8 does not allow loopback."""
        env = {"RECEIVER_FETCH_ALLOW_NETWORKS": "10.0.0.0/8, 192.168.0.0/16"}
        seen, run, job = await _download(tmp_path, _video, **env)
        assert ([], "dead", {}) == (seen, run.state.value, job.files)

    async def test_a_bad_network_is_a_config_error(self, tmp_path: Path) -> None:
        """An entry that is not a network is named in a one-line error."""
        from receiver.config import load_settings
        from receiver.errors import ConfigError

        empty = tmp_path / "receiver.toml"
        empty.write_text("")
        with pytest.raises(ConfigError, match="RECEIVER_FETCH_ALLOW_NETWORKS: 'intranet'"):
            load_settings({"RECEIVER_FETCH_ALLOW_NETWORKS": "10.0.0.0/8,intranet"}, empty)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestFileModes:
    """Downloads are readable by the receiver's user only: files 0600, folders 0700."""

    async def test_stored_file_and_its_folders(self, tmp_path: Path) -> None:
        """Even with a umask of 0, the result is 0600 and the folders made for it 0700."""
        with _umask(0):
            _, run, job = await _download(tmp_path, _video)
        path = Path(job.files["result"].path)
        assert run.done
        assert (0o600, 0o700, 0o700) == (
            _mode(path),
            _mode(path.parent),
            _mode(tmp_path / "v"),
        )

    async def test_part_file_of_a_broken_transfer(self, tmp_path: Path) -> None:
        """The part file a broken transfer leaves for its resume is 0600 too."""

        def respond(seen: Seen) -> Reply:
            return Reply(body=VIDEO, headers={"content-type": "video/mp4"}, cut_after=100)

        with _umask(0):
            _, run, _ = await _download(tmp_path, respond)
        [part] = [p for p in (tmp_path / "v").rglob("*.part")]
        assert ("dead", 0o600, 0o700) == (run.state.value, _mode(part), _mode(part.parent))
