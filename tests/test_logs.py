"""Logs: JSON lines or text, the request, job and provider on each line, secrets never."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from receiver.dispatch import Registry
from receiver.logs import Redactor, bind, make_handler
from receiver.models import Event, Job, Status, new_id, now
from receiver.serving import bind as bind_socket
from receiver.store import NewJob
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import digest

TOKEN = "tok-SECRET-in-the-path-0123456789"
SECRET = "hdr-SECRET-in-the-header-987654"
ADMIN_TOKEN = "admin-token-value-123-" + "v" * 20
BODY = {"task_id": "task-1", "status": "processing", "percentage": "40"}


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything the `receiver` loggers write at DEBUG and up, as JSON lines."""
    stream = io.StringIO()
    handler = make_handler("json", stream=stream, secrets=["configured-api-key-42"])
    logger = logging.getLogger("receiver")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveReceiver]:
    registry = Registry()

    @registry.on("*")
    async def broken(event: Event, job: Job) -> None:
        raise RuntimeError("handler failed")

    env = {"RECEIVER_HANDLER_MAX_ATTEMPTS": "1"}
    async with running_receiver(tmp_path, handlers=registry, env=env) as receiver:
        yield receiver


async def add_job(live: LiveReceiver) -> str:
    at = now()
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id="task-1",
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(
        NewJob(job=job, token_hash=digest(TOKEN), secret_hash=digest(SECRET))
    )
    return job.id


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestRedactor:
    """Credentials are scrubbed from any text by their shape or because they are configured."""

    @pytest.mark.parametrize(
        ("text", "gone"),
        [
            (f"POST /hooks/apiframe/{TOKEN} failed", TOKEN),
            ("GET /hooks/aivideoapi/x?uuid=1&token=abcdef123", "abcdef123"),
            ("Authorization: Bearer sk-abcdef123456", "sk-abcdef123456"),
            ("headers {'x-webhook-secret': 'hunter2hunter2'}", "hunter2hunter2"),
            ("headers {'x_webhook_secret': 'hunter2hunter2'}", "hunter2hunter2"),
            ("X_API_KEY=hunter2hunter2 sent", "hunter2hunter2"),
            ("key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("the key is configured-api-key-42 here", "configured-api-key-42"),
        ],
    )
    def test_shapes(self, text: str, gone: str) -> None:
        """Each kind of credential is replaced and the rest of the line stays."""
        redacted = Redactor(["configured-api-key-42"])(text)
        assert gone not in redacted
        assert "[redacted]" in redacted or "[token:" in redacted


class TestLines:
    """Each line carries the request id, job id and provider of the work it reports."""

    async def test_callbacks_are_logged_without_their_secrets(
        self, live: LiveReceiver, captured: io.StringIO
    ) -> None:
        """At INFO and below: one line per callback, ids attached, token and secret absent."""
        job_id = await add_job(live)
        async with httpx.AsyncClient(base_url=live.url) as client:
            for secret in (SECRET, "wrong-" + SECRET):
                await client.post(
                    f"/hooks/apiframe/{TOKEN}?token={TOKEN}",
                    json=BODY,
                    headers={"x-webhook-secret": secret},
                )
        for _ in range(100):  # the handler's failure is logged by the dispatcher
            if "dead after" in captured.getvalue():
                break
            await asyncio.sleep(0.05)
        text = captured.getvalue()
        assert TOKEN not in text and SECRET not in text
        entries = lines(captured)
        hooks = [e for e in entries if e["logger"] == "receiver.hooks"]
        assert ["applied", "wrong_secret"] == [e["message"].split()[4] for e in hooks]
        for entry in hooks:
            assert ("info", "apiframe", job_id) == (
                entry["level"],
                entry["provider"],
                entry["job_id"],
            )
            assert entry["request_id"].startswith("req_")
        stored = await live.runtime.store.list_requests(job_id)
        assert [hooks[0]["request_id"]] == [r.id for r in stored]  # the same id, kept
        [dead] = [e for e in entries if "dead after" in e["message"]]
        assert (job_id, "apiframe") == (dead["job_id"], dead["provider"])

    async def test_quiet_at_the_default_level(self, live: LiveReceiver) -> None:
        """At WARNING (the default) an accepted callback writes nothing."""
        stream = io.StringIO()
        handler = make_handler("json", stream=stream)
        handler.setLevel(logging.WARNING)
        logger = logging.getLogger("receiver.hooks")
        logger.addHandler(handler)
        try:
            await add_job(live)
            async with httpx.AsyncClient(base_url=live.url) as client:
                answer = await client.post(
                    f"/hooks/apiframe/{TOKEN}", json=BODY, headers={"x-webhook-secret": SECRET}
                )
            assert 200 == answer.status_code
        finally:
            logger.removeHandler(handler)
        assert "" == stream.getvalue()


class TestFormats:
    """JSON lines off a terminal, readable text on one, and either on request."""

    def _emit(self, handler: logging.Handler) -> None:
        record = logging.LogRecord(
            "receiver.x", logging.WARNING, __file__, 1, "hello %s", ("w",), None
        )
        handler.handle(record)

    def test_auto_is_text_on_a_terminal(self) -> None:
        """On a terminal a line reads like text and ends with the bound ids."""
        stream = Terminal()

        async def in_a_task() -> None:
            bind(request_id="req_1", job_id="job_1", provider="rixapi")
            self._emit(make_handler("auto", stream=stream))

        asyncio.run(in_a_task())
        line = stream.getvalue().strip()
        assert "WARNING" in line and "hello w" in line
        assert line.endswith("request=req_1 job=job_1 provider=rixapi")

    def test_auto_is_json_elsewhere_and_text_can_be_forced(self) -> None:
        """Off a terminal a line is one JSON object; `text` overrides that."""
        stream = io.StringIO()
        self._emit(make_handler("auto", stream=stream))
        assert ("warning", "hello w") == tuple(
            json.loads(stream.getvalue())[k] for k in ("level", "message")
        )
        forced = io.StringIO()
        self._emit(make_handler("text", stream=forced))
        assert not forced.getvalue().startswith("{")


class TestServe:
    """`receiver serve` writes JSON lines to a pipe, with no secret in them."""

    async def test_serve_logs_json_lines(self, tmp_path: Path) -> None:
        """A callback with a secret header and a token path leaves neither in serve's logs."""
        sock = bind_socket()
        port = sock.getsockname()[1]
        sock.close()
        env = {
            **os.environ,
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
            "RECEIVER_PORT": str(port),
            "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "RECEIVER_ADMIN_TOKEN": ADMIN_TOKEN,
            "RECEIVER_HANDLERS": "",
            "RECEIVER_LOG_LEVEL": "INFO",
            "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "serve",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(200):
                    try:
                        await client.get("/healthz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                for secret in (SECRET, "wrong"):
                    await client.post(
                        f"/hooks/apiframe/{TOKEN}", json=BODY, headers={"x-webhook-secret": secret}
                    )
                await client.post(
                    "/hooks/apiframe", json=BODY, headers={"x-webhook-secret": SECRET}
                )
                await client.get("/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        finally:
            process.terminate()
            _, err = await asyncio.wait_for(process.communicate(), timeout=30)
        text = err.decode()
        assert TOKEN not in text and SECRET not in text and ADMIN_TOKEN not in text
        logged = [line for line in text.splitlines() if not line.startswith("receiver:")]
        entries = [json.loads(line) for line in logged]
        hooks = [e for e in entries if e["logger"] == "receiver.hooks"]
        assert 3 == len(hooks)
        assert all(e["provider"] == "apiframe" and e["request_id"] for e in hooks)
        assert "job_id" in hooks[2]  # the static route made a job
