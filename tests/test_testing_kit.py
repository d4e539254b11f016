"""receiver.testing for users' suites: provider callbacks for a job, and handlers run in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver import Registry, Retry
from receiver.dispatch import registry as global_registry
from receiver.testing import build_callback, handler_kit


class TestBuildCallback:
    """Each provider's callback comes out in its documented shape, on the job's own URL."""

    def test_apiframe_carries_the_secret(self) -> None:
        callback = build_callback(
            "apiframe", "running", task_id="t1", token="tok", secret="s3", progress=0.4
        )
        assert ("POST", "/hooks/apiframe/tok") == (callback.method, callback.path)
        assert "s3" == callback.headers["x-webhook-secret"]
        body = json.loads(callback.body)
        # Documented quirk: percentage is a string while processing.
        assert {
            "task_id": "t1",
            "task_type": "runway",
            "status": "processing",
            "percentage": "40",
        } == body

    def test_rixapi_bare_and_wrapped(self) -> None:
        bare = json.loads(build_callback("rixapi", "failed", task_id="t1", token="tok").body)
        wrapped = json.loads(
            build_callback("rixapi", "failed", task_id="t1", token="tok", wrapped=True).body
        )
        assert ("2", "1") == (bare["status"], bare["refund"])
        assert all(isinstance(value, str) for value in bare.values())
        assert bare == wrapped["data"]
        assert 200 == wrapped["code"]

    def test_aivideoapi_is_a_bodiless_nudge(self) -> None:
        callback = build_callback("aivideoapi", "succeeded", task_id="u-1", token="tok")
        assert ("GET", "/hooks/aivideoapi/tok?uuid=u-1", b"") == (
            callback.method,
            callback.path,
            callback.body,
        )

    @pytest.mark.parametrize("provider", ["artvisum", "runway_ai"])
    def test_providers_that_never_call_back(self, provider: str) -> None:
        with pytest.raises(ValueError, match="never calls back"):
            build_callback(provider, "succeeded", task_id="t1", token="tok")

    def test_unknown_status(self) -> None:
        with pytest.raises(ValueError, match="status must be one of"):
            build_callback("rixapi", "done", task_id="t1", token="tok")


class TestHandlerKit:
    """The kit runs the user's handlers through the real path and reports what they did."""

    async def test_which_handlers_ran_with_what_event(self, tmp_path: Path) -> None:
        handlers = Registry()

        @handlers.on("*")
        async def everything(event: Any, job: Any) -> None:
            pass

        @handlers.on("succeeded", provider="rixapi")
        def rixapi_only(event: Any, job: Any) -> None:
            pass

        async with handler_kit(tmp_path, handlers) as kit:
            job = await kit.job("apiframe", metadata={"order": 1})
            for status in ("running", "succeeded"):
                assert 200 == (await kit.callback(job, status)).status_code
            runs = await kit.settle()
            stored = await kit.get(job)
        assert [
            (f"{__name__}.{everything.__qualname__}", "running", 0.4),
            (f"{__name__}.{everything.__qualname__}", "succeeded", 1.0),
        ] == [(run.handler, run.event.status.value, run.event.progress) for run in runs]
        assert all(run.done and run.attempts == 1 and run.error is None for run in runs)
        assert ("succeeded", {"order": 1}) == (stored.status.value, stored.metadata)

    async def test_failures_retries_and_errors(self, tmp_path: Path) -> None:
        handlers = Registry()
        calls: list[int] = []

        @handlers.on("succeeded")
        async def flaky(event: Any, job: Any, delivery: Any) -> None:
            calls.append(delivery.attempt)
            if delivery.attempt < 2:
                raise Retry(defer=0)

        @handlers.on("succeeded")
        async def broken(event: Any, job: Any) -> None:
            raise RuntimeError("bucket is gone")

        async with handler_kit(tmp_path, handlers) as kit:
            job = await kit.job("rixapi")
            await kit.callback(job, "succeeded")
            runs = {run.handler.rsplit(".", 1)[1]: run for run in await kit.settle()}
        assert ("done", 2, [1, 2]) == (runs["flaky"].state, runs["flaky"].attempts, calls)
        assert ("dead", 3, "RuntimeError: bucket is gone") == (
            runs["broken"].state,
            runs["broken"].attempts,
            runs["broken"].error,
        )
        assert f'File "{__file__}", line 102, in broken' in (runs["broken"].traceback or "")

    async def test_a_wrong_secret_runs_nothing(self, tmp_path: Path) -> None:
        handlers = Registry()

        @handlers.on("*")
        async def anything(event: Any, job: Any) -> None:
            pass

        async with handler_kit(tmp_path, handlers) as kit:
            job = await kit.job("apiframe")
            forged = build_callback(
                "apiframe", "succeeded", task_id=job.task_id, token=job.token, secret="guess"
            )
            answer = await kit.send(forged)
            runs = await kit.settle()
        assert 401 == answer.status_code
        assert [] == runs

    @pytest.mark.parametrize("provider", ["aivideoapi", "artvisum", "runway_ai"])
    async def test_providers_without_callback_bodies(self, tmp_path: Path, provider: str) -> None:
        """Their statements still reach the handlers, read by their own adapters."""
        handlers = Registry()
        seen: list[tuple[str, str | None]] = []

        @handlers.on("succeeded")
        async def done(event: Any, job: Any) -> None:
            seen.append((event.provider, event.result_url))

        async with handler_kit(tmp_path, handlers) as kit:
            job = await kit.job(provider)
            answer = await kit.callback(job, "succeeded", result_url="https://cdn.test/r.mp4")
            await kit.settle()
        assert 200 == answer.status_code, answer.text
        assert [(provider, "https://cdn.test/r.mp4")] == seen

    async def test_a_handlers_module_by_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`handler_kit(tmp_path, "module")` imports the module as `receiver serve` would."""
        # The module registers into the shared registry: keep this test's additions local.
        monkeypatch.setattr(global_registry, "handlers", dict(global_registry.handlers))
        package = tmp_path / "src"
        package.mkdir()
        (package / "kit_user_handlers.py").write_text(
            "from receiver import on\n"
            "seen = []\n"
            "@on('failed')\n"
            "async def alert(event, job):\n"
            "    seen.append(event.error)\n"
        )
        monkeypatch.syspath_prepend(str(package))
        monkeypatch.delitem(sys.modules, "kit_user_handlers", raising=False)
        async with handler_kit(tmp_path, "kit_user_handlers") as kit:
            job = await kit.job("rixapi")
            await kit.callback(job, "failed")
            [run] = await kit.settle()
        module = sys.modules["kit_user_handlers"]
        assert ("kit_user_handlers.alert", True) == (run.handler, run.done)
        assert 1 == len(module.seen)
        assert "生成失败" in module.seen[0]  # the simulated rixapi failure message

    async def test_built_ins_never_outlive_their_kit(self, tmp_path: Path) -> None:
        """A built-in switched on in one kit is not registered in the user's registry."""
        handlers = Registry()
        env = {"RECEIVER_NOTIFY_URL": "http://127.0.0.1:9/hook"}
        async with handler_kit(tmp_path, handlers, env=env) as kit:
            assert "builtin.notify" in kit.runtime.handlers.handlers
        assert {} == dict(handlers.handlers)
