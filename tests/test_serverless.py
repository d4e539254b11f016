"""The Lambda entries: an API Gateway HTTP API (v2) event through Mangum, then the drain."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver import serverless
from receiver.dispatch import registry as global_registry
from receiver.errors import ConfigError
from receiver.models import DeliveryState, Job, Status, now
from receiver.store import NewJob
from receiver.store.postgres import PostgresStore
from receiver.verify import digest, mint_secret, mint_token

TASK_ID = "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a"
HANDLERS = textwrap.dedent(
    """
    from receiver import on

    RUNS = []

    @on("succeeded", provider="apiframe")
    async def done(event, job):
        RUNS.append((event.id, job.id, job.result_url))
    """
)


def http_api_event(path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, as AWS sends it to a Lambda integration."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            "content-length": str(len(body)),
            "content-type": "application/json",
            "host": "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com",
            "user-agent": "axios/1.6.8",
            "x-amzn-trace-id": "Root=1-6740db51-1f2e3d4c5b6a79880a1b2c3d",
            "x-forwarded-for": "203.0.113.9",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **headers,
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "axios/1.6.8",
            },
            "requestId": "BxQ9sgGHoAMEV3w=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:01:23:45 +0000",
            "timeEpoch": 1795310625000,
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


class LambdaContext:
    """The attributes of the context object Lambda passes to a Python handler."""

    function_name = "receiver-ingest"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:receiver-ingest"
    memory_limit_in_mb = 512
    aws_request_id = "6f9b0c1e-8a3d-4c2b-9e7f-0123456789ab"
    log_group_name = "/aws/lambda/receiver-ingest"
    log_stream_name = "2026/11/22/[$LATEST]0123456789abcdef"

    def __init__(self, remaining_ms: int = 30_000):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_env(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment a deployed function has, with a handler module of the test's own."""
    (tmp_path / "lambda_handlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    env = {
        "RECEIVER_DATABASE_URL": pg_url,
        "RECEIVER_ADMIN_TOKEN": "admin-token-for-lambda-" + "l" * 20,
        "RECEIVER_HANDLERS": "lambda_handlers",
        "RECEIVER_PUBLIC_URL": "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(serverless, "_http", None)
    try:
        yield env
    finally:
        # The handler registered itself in the process-wide registry: take it out again.
        for name in [n for n in global_registry.handlers if n.startswith("lambda_handlers.")]:
            del global_registry.handlers[name]
        sys.modules.pop("lambda_handlers", None)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def add_job(url: str, token: str, secret: str) -> None:
    store = PostgresStore(url)
    await store.open()
    try:
        job = Job(
            id="job_lambda",
            provider="apiframe",
            task_id=TASK_ID,
            status=Status.QUEUED,
            created_at=now(),
            updated_at=now(),
        )
        await store.create_job(
            NewJob(job=job, token_hash=digest(token), secret_hash=digest(secret))
        )
    finally:
        await store.close()


async def stored(url: str) -> tuple[Job | None, list[Any], list[Any], int]:
    store = PostgresStore(url)
    await store.open()
    try:
        return (
            await store.get_job("job_lambda"),
            await store.list_events("job_lambda"),
            await store.list_deliveries(job_id="job_lambda"),
            len(await store.list_quarantine()),
        )
    finally:
        await store.close()


class TestLambda:
    """A callback through API Gateway is verified and stored; the drain then runs its handler."""

    def test_callback_then_drain(self, lambda_env: dict[str, str]) -> None:
        """A right secret is stored (200), a wrong one refused (401); the drain runs the handler."""
        url = lambda_env["RECEIVER_DATABASE_URL"]
        token, secret = mint_token(), mint_secret()
        run(add_job(url, token, secret))
        body = json.dumps(
            {
                "task_id": TASK_ID,
                "task_type": "runway",
                "video_url": "https://cdn.apiframe.pro/videos/29e983ca.mp4",
                "status": "finished",
                "percentage": 100,
            }
        ).encode()
        path = f"/hooks/apiframe/{token}"

        wrong = serverless.handler(
            http_api_event(path, body, {"x-webhook-secret": "not-the-secret"}), LambdaContext()
        )
        assert 401 == wrong["statusCode"]
        job, events, deliveries, quarantined = run(stored(url))
        assert job is not None
        assert (Status.QUEUED, [], [], 1) == (job.status, events, deliveries, quarantined)

        answer = serverless.handler(
            http_api_event(path, body, {"x-webhook-secret": secret}), LambdaContext()
        )
        assert 200 == answer["statusCode"], answer
        job, events, deliveries, _ = run(stored(url))
        assert job is not None
        assert (Status.SUCCEEDED, "https://cdn.apiframe.pro/videos/29e983ca.mp4") == (
            job.status,
            job.result_url,
        )
        assert 1 == len(events)
        assert [DeliveryState.PENDING] == [d.state for d in deliveries]

        scheduled = {"version": "0", "source": "aws.events", "detail-type": "Scheduled Event"}
        assert {"polls": 0, "deliveries": 1} == serverless.drain(scheduled, LambdaContext(30_000))
        runs = sys.modules["lambda_handlers"].RUNS
        assert [(events[0].id, "job_lambda", job.result_url)] == runs
        _, _, deliveries, _ = run(stored(url))
        assert [DeliveryState.DONE] == [d.state for d in deliveries]
        assert {"polls": 0, "deliveries": 0} == serverless.drain(scheduled, LambdaContext())

    def test_sqlite_and_missing_admin_token_are_refused(self, tmp_path: Path) -> None:
        """Lambda instances share nothing but the database, and have no disk for a token."""
        with pytest.raises(ConfigError, match="PostgreSQL"):
            serverless.serverless_settings({"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
        with pytest.raises(ConfigError, match="RECEIVER_ADMIN_TOKEN"):
            serverless.serverless_settings({"RECEIVER_DATABASE_URL": "postgresql://u@h/db"})
