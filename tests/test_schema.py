"""The admin API against its own OpenAPI schema, with schemathesis, on a live receiver.

The receiver serves in a thread of its own (schemathesis's calls block), on a real
SQLite file; the schema is the one it serves at /schema/openapi.json.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from receiver.testing import LiveReceiver, running_receiver

ADMIN_TOKEN = "schema-admin-" + "t" * 40
# Routes anyone may call; every other route outside /hooks is an admin route.
OPEN_PATHS = frozenset({"/healthz"})
CASES = int(os.environ.get("RECEIVER_SCHEMA_EXAMPLES", "40"))
TRIED: Counter[str] = Counter()
SEEN: list[str] = []  # each failure as first seen: a flaky one is reported only as "flaky"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _Served:
    """A receiver running in its own thread and event loop, until `stop`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ready = threading.Event()
        self.live: LiveReceiver | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            # The fuzzing and the guard tests send thousands of wrong tokens from one address and
            # check each answer: the limit on guessing (tested in test_api) would turn them to 429.
            env = {"RECEIVER_AUTH_FAILURE_BURST": "1000000"}
            async with running_receiver(self.directory, admin_token=ADMIN_TOKEN, env=env) as live:
                self.live = live
                self.ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    def start(self) -> LiveReceiver:
        self._thread.start()
        self.ready.wait(60)
        if self.live is None:
            raise RuntimeError("the receiver did not start") from self.error
        return self.live

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveReceiver]:
    served = _Served(tmp_path_factory.mktemp("schema"))
    receiver = served.start()
    try:
        # A job or two, so reads by id and listing have something to return.
        for task_id in ("schema-task-1", "schema-task-2"):
            answer = httpx.post(
                f"{receiver.url}/jobs",
                json={"provider": "rixapi", "task_id": task_id},
                headers=receiver.admin_headers,
                timeout=10,
            )
            answer.raise_for_status()
        yield receiver
    finally:
        served.stop()


@pytest.fixture(scope="module")
def api_schema(live: LiveReceiver) -> Any:
    schema = schemathesis.openapi.from_url(f"{live.url}/schema/openapi.json")
    return schema.exclude(path_regex="^/hooks")


def _conforms(operation: Any, live: LiveReceiver, generation_mode: Any) -> None:
    @given(case=operation.as_strategy(generation_mode))
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        TRIED[operation.label] += 1
        try:
            case.call_and_validate(headers=live.admin_headers, checks=CHECKS)
        except Exception as exc:
            SEEN.append(f"{case.as_curl_command()}\n{exc}")
            raise

    run()


class TestAdminApiConforms:
    """With the token, every operation: no server error, documented status codes and bodies."""

    # schemathesis's negative strategies draw from `random`, which hypothesis deprecates.
    @pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"
    )
    @pytest.mark.parametrize("mode", ["positive", "negative"])
    def test_every_operation(self, api_schema: Any, live: LiveReceiver, mode: str) -> None:
        failures = []
        operations = [result.ok() for result in api_schema.get_all_operations()]
        assert len(operations) >= 5
        for operation in operations:
            try:
                _conforms(operation, live, GenerationMode(mode))
            except Unsatisfiable:
                # Nothing is invalid for it (a string path parameter, no query, no body).
                assert GenerationMode.NEGATIVE is GenerationMode(mode)
                TRIED[operation.label] += 0
            except Exception as exc:
                failures.append(f"{operation.label}: {exc!r} {getattr(exc, 'exceptions', '')}")
        print(f"schemathesis ({mode}):", dict(TRIED))
        TRIED.clear()
        assert [] == failures, "\n\n".join(SEEN[:3])


def _admin_operations(live: LiveReceiver) -> dict[tuple[str, str], dict[str, Any]]:
    """Every admin operation the served schema lists, with its documented responses."""
    spec = httpx.get(f"{live.url}/schema/openapi.json", timeout=10).json()
    return {
        (method.upper(), path): operation.get("responses", {})
        for path, item in spec["paths"].items()
        if not path.startswith("/hooks") and path not in OPEN_PATHS
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }


class TestAdminRoutesNeedTheToken:
    """Every admin route in the schema answers 401 without the token, whatever else is sent."""

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": ADMIN_TOKEN},
            {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
            {"Authorization": "Bearer"},
            {"X-Admin-Token": ADMIN_TOKEN, "Cookie": f"token={ADMIN_TOKEN}"},
        ],
        ids=["none", "wrong", "basic", "no-scheme", "longer", "empty", "elsewhere"],
    )
    def test_every_admin_route(self, live: LiveReceiver, headers: dict[str, str]) -> None:
        operations = _admin_operations(live)
        assert len(operations) >= 5  # the schema lists the admin routes at all
        answers = {}
        for method, path in operations:
            url = live.url + path.replace("{", "").replace("}", "")
            body = {"provider": "rixapi", "task_id": "t-1"} if method != "GET" else None
            answers[(method, path)] = httpx.request(
                method, url, json=body, headers=headers, timeout=10
            ).status_code
        assert {key: 401 for key in answers} == answers

    def test_401_is_documented(self, live: LiveReceiver) -> None:
        documented = {key: "401" in responses for key, responses in _admin_operations(live).items()}
        assert {key: True for key in documented} == documented
