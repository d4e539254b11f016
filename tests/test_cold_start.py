"""A cold start takes callbacks before the web framework and the HTTP client are loaded.

`receiver serve` and the serverless entry import only what a provider's callback needs;
the framework (Litestar) is loaded in the background, or on the first request that needs
it, and the outgoing client (httpx) when something first sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.serving import serve_in_loop
from receiver.urls import http_url

SECRET = "s" * 24


def settings_for(tmp_path: Path) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_ADMIN_TOKEN": "a" * 32,
        "RECEIVER_APIFRAME_WEBHOOK_SECRET": SECRET,
        "RECEIVER_HANDLERS": "",
    }


def callback(task_id: str) -> bytes:
    return json.dumps({"task_id": task_id, "status": "finished", "percentage": 100}).encode()


class TestImports:
    def test_the_callback_path_loads_neither_framework_nor_client(self, tmp_path: Path) -> None:
        """In a fresh interpreter: the CLI, the app, a committed callback to each route style
        and refusals of each kind, without the framework or the outgoing client."""
        script = textwrap.dedent(
            """
            import asyncio, json, sys
            import receiver.cli
            from receiver.app import create_app
            from receiver.config import load_settings
            from receiver.dispatch import Registry
            from receiver.store import NewJob
            from receiver.submit import queued_job
            from receiver.verify import digest

            async def main():
                env, requests = json.loads(sys.argv[1]), json.loads(sys.argv[2])
                # No loops: a nudge makes the poller pull, which loads the client, rightly.
                app = create_app(load_settings(env, config_file=None), handlers=Registry(),
                                 preload=False, run_loops=False)
                statuses = []
                async with app.lifespan():
                    job = NewJob(job=queued_job("rixapi", "t-r"), token_hash=digest("tok-r"))
                    await app.runtime.store.create_job(job)
                    for method, path, secret, text in requests:
                        body = text.encode()
                        headers = [(b"content-length", str(len(body)).encode())]
                        if secret:
                            headers.append((b"x-webhook-secret", secret.encode()))
                        scope = {"type": "http", "method": method, "path": path,
                                 "query_string": b"", "client": ("127.0.0.1", 1),
                                 "headers": headers}
                        sent = []
                        async def receive():
                            return {"type": "http.request", "body": body}
                        async def send(message):
                            sent.append(message)
                        await app(scope, receive, send)
                        statuses.append(sent[0]["status"])
                loaded = [m for m in ("litestar", "httpx", "rich") if m in sys.modules]
                print(json.dumps({"statuses": statuses, "loaded": loaded}))

            asyncio.run(main())
            """
        )
        rixapi = json.dumps({"task_id": "t-r", "status": "1", "progress": "50"})
        requests = [
            ("POST", "/hooks/apiframe", SECRET, callback("cold-1").decode()),  # static secret
            ("POST", "/hooks/rixapi/tok-r", None, rixapi),  # a job's URL, its token alone
            ("GET", "/hooks/rixapi/tok-r", None, ""),  # a nudge
            ("POST", "/hooks/apiframe", "wrong", callback("cold-2").decode()),
            ("POST", "/hooks/apiframe", SECRET, "not json"),
            ("POST", "/hooks/rixapi/no-such-token", None, rixapi),
            ("PUT", "/hooks/rixapi/tok-r", None, ""),  # no route takes the method
            ("POST", "/hooks/a/b/c", None, ""),  # nor the path
        ]
        env = {**settings_for(tmp_path), "RECEIVER_RIXAPI_BASE_URL": "http://127.0.0.1:9"}
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(env), json.dumps(requests)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert 0 == done.returncode, done.stderr
        expected = [200, 200, 202, 401, 400, 404, 405, 404]
        assert {"statuses": expected, "loaded": []} == json.loads(done.stdout)


class TestCollector:
    def test_a_server_process_freezes_what_it_built_and_collects_less_often(
        self, tmp_path: Path
    ) -> None:
        """With tune_gc, once the framework is built: objects frozen, thresholds raised."""
        script = textwrap.dedent(
            """
            import asyncio, gc, json, sys
            from receiver.app import create_app
            from receiver.config import load_settings
            from receiver.dispatch import Registry

            async def main():
                env = json.loads(sys.argv[1])
                before = (gc.get_freeze_count(), gc.get_threshold())
                app = create_app(load_settings(env, config_file=None), handlers=Registry(),
                                 tune_gc=sys.argv[2] == "on")
                async with app.lifespan():
                    await app.framework()
                    after = (gc.get_freeze_count(), gc.get_threshold())
                print(json.dumps({"before": before, "after": after}))

            asyncio.run(main())
            """
        )
        seen = {}
        for mode in ("on", "off"):
            done = subprocess.run(
                [sys.executable, "-c", script, json.dumps(settings_for(tmp_path)), mode],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert 0 == done.returncode, done.stderr
            seen[mode] = json.loads(done.stdout)
        assert [0, [700, 10, 10]] == seen["on"]["before"] == seen["off"]["after"]
        frozen, thresholds = seen["on"]["after"]
        assert frozen > 10_000  # the modules, the routes, the settings
        assert [10_000, 10, 10] == thresholds


class TestFramework:
    async def test_callback_answered_before_the_framework_then_loaded_on_demand(
        self, tmp_path: Path
    ) -> None:
        """Without preload, callbacks and refusals on the hook routes leave the framework
        unloaded; /healthz loads it."""
        app = create_app(
            load_settings(settings_for(tmp_path), config_file=None),
            handlers=Registry(),
            preload=False,
        )
        async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                "/hooks/apiframe", content=callback("t-1"), headers={"x-webhook-secret": SECRET}
            )
            refused = await client.post(
                "/hooks/apiframe", content=callback("t-2"), headers={"x-webhook-secret": "no"}
            )
            wrong_method = await client.get("/hooks/apiframe")
            assert (200, 401, 405) == tuple(a.status_code for a in (answer, refused, wrong_method))
            assert 405 == wrong_method.status_code and "POST" in wrong_method.headers["allow"]
            assert (app._framework, app._loading) == (None, None)
            health = await client.get("/healthz")
            assert 200 == health.status_code
            assert "ok" == health.json()["status"]
            assert app._framework is not None

    async def test_preload_loads_the_framework_after_start(self, tmp_path: Path) -> None:
        """With preload (the default), the framework is ready without a request asking."""
        app = create_app(
            load_settings(settings_for(tmp_path), config_file=None), handlers=Registry()
        )
        async with serve_in_loop(app):
            framework = await app.framework()
            assert framework is app._framework

    async def test_a_store_that_cannot_open_fails_the_start(self, tmp_path: Path) -> None:
        """The lifespan answers startup.failed (uvicorn then exits), naming no path or secret."""
        env = settings_for(tmp_path)
        env["RECEIVER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'r.db'}"
        (tmp_path / "missing").write_text("a file where a directory must be")
        app = create_app(load_settings(env, config_file=None), handlers=Registry())
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        assert [{"type": "lifespan.startup.failed", "message": "StoreUnavailable"}] == sent


class TestHttpUrl:
    @pytest.mark.parametrize(
        "value",
        [
            "http://hooks.example",
            "https://hooks.example:8443/base/path?x=1",
            "http://127.0.0.1:8000",
            "http://[::1]:8000/",
            "HTTPS://Hooks.Example/",
        ],
    )
    def test_accepted_as_httpx_accepts_them(self, value: str) -> None:
        """What we accept, the client that will send to it accepts too, with the same host."""
        parts = http_url(value)
        assert parts is not None
        assert httpx.URL(value).host == parts.hostname

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "hooks.example",
            "/relative/path",
            "ftp://hooks.example",
            "http://",
            "http:///path-only",
            "http://hooks.example:99999",
            "http://hooks.example:port",
            "http://hooks .example",
            "http://hooks.example/\npath",
            "http://hooks.example/\x00",
        ],
    )
    def test_refused(self, value: str) -> None:
        """Not absolute http(s) with a host, a port out of range, whitespace or controls."""
        assert http_url(value) is None

    def test_not_a_string(self) -> None:
        assert http_url(None) is None
        assert http_url(b"http://hooks.example") is None
