"""Jobs carry the user's context: metadata for handlers and filters, and a per-job notify_url."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from downstream import downstream
from procs import run_cli

from receiver.dispatch import Registry
from receiver.models import StoredFile
from receiver.standard_webhooks import mint_whsec
from receiver.store.base import NewJob, Store, metadata_filter
from receiver.submit import queued_job
from receiver.testing import handler_kit, running_receiver


async def _jobs(store: Store, *metadata: dict[str, Any]) -> list[str]:
    ids = []
    for index, values in enumerate(metadata):
        job = queued_job("rixapi", f"task-{index}", values)
        await store.create_job(NewJob(job=job))
        ids.append(job.id)
    return ids


class TestStoreFilter:
    """`list_jobs(metadata=...)` keeps the jobs whose metadata has every wanted value."""

    async def test_values_strings_numbers_and_booleans(self, store: Store) -> None:
        """A text matches the same string and the number or boolean it spells."""
        acme, globex, other = await _jobs(
            store,
            {"customer": "acme", "order": 7, "vip": True},
            {"customer": "globex", "order": "7"},
            {"customer": "acme corp", "order": 8},
        )

        async def ids(**wanted: str) -> set[str]:
            page = await store.list_jobs(metadata=metadata_filter(wanted))
            return {job.id for job in page.items}

        assert {acme} == await ids(customer="acme")
        assert {acme, globex} == await ids(order="7")
        assert {acme} == await ids(vip="true")
        assert {acme} == await ids(customer="acme", order="7")
        assert set() == await ids(customer="acme", order="8")
        assert {other} == await ids(customer="acme corp")
        assert set() == await ids(customer="' OR 1=1 --")
        assert {acme, globex, other} == {job.id for job in (await store.list_jobs()).items}

    async def test_combined_with_other_filters_and_paging(self, store: Store) -> None:
        """The metadata filter works with provider filters and the `next` cursor."""
        ids = await _jobs(store, *({"batch": "b1"} for _ in range(5)), {"batch": "b2"})
        first = await store.list_jobs(metadata=metadata_filter({"batch": "b1"}), limit=3)
        second = await store.list_jobs(
            metadata=metadata_filter({"batch": "b1"}), limit=3, before=first.next
        )
        assert list(reversed(ids[:5])) == [j.id for j in first.items + second.items]
        assert None is second.next
        none = await store.list_jobs(provider="apiframe", metadata=metadata_filter({"batch": "b1"}))
        assert [] == none.items

    async def test_keys_with_dots_are_literal(self, store: Store) -> None:
        """`a.b` is one key, not a path into nested metadata."""
        flat, nested = await _jobs(store, {"a.b": "x"}, {"a": {"b": "x"}})
        page = await store.list_jobs(metadata=metadata_filter({"a.b": "x"}))
        assert [flat] == [job.id for job in page.items]
        assert nested != flat

    @pytest.mark.parametrize("key", ['a"b', "a\\b", "", "a b", "x" * 65, "$.a"])
    def test_bad_keys_are_refused(self, key: str) -> None:
        with pytest.raises(ValueError, match="metadata key"):
            metadata_filter({key: "x"})


class TestStoredFiles:
    """`save_file` records a local copy on the job, replacing an older one of the same name."""

    async def test_save_and_replace(self, store: Store) -> None:
        [job_id] = await _jobs(store, {})
        first = StoredFile(path="/a", sha256="0" * 64, size=1, url="https://x/1", stored_at=1.0)
        second = StoredFile(path="/b", sha256="1" * 64, size=2, url="https://x/2", stored_at=2.0)
        await store.save_file(job_id, "result", first)
        await store.save_file(job_id, "preview", first)
        await store.save_file(job_id, "result", second)
        job = await store.get_job(job_id)
        assert job is not None
        assert {"result": second, "preview": first} == job.files


class TestHandlersSeeMetadata:
    """Metadata given at submit time reaches every handler, for every status."""

    async def test_every_handler_every_status(self, tmp_path: Path) -> None:
        registry = Registry()
        seen: list[tuple[str, str, dict[str, Any]]] = []

        @registry.on("*")
        async def first(event: Any, job: Any) -> None:
            seen.append(("first", event.status.value, job.metadata))

        @registry.on(["running", "succeeded"])
        def second(event: Any, job: Any) -> None:
            seen.append(("second", event.status.value, job.metadata))

        async with handler_kit(tmp_path, registry) as kit:
            job = await kit.job("apiframe", metadata={"customer": "acme", "order": 7})
            await kit.callback(job, "running")
            await kit.callback(job, "succeeded")
            await kit.settle()
        meta = {"customer": "acme", "order": 7}
        assert sorted(
            [
                ("first", "running", meta),
                ("second", "running", meta),
                ("first", "succeeded", meta),
                ("second", "succeeded", meta),
            ]
        ) == sorted(seen)


class TestHttp:
    """`GET /jobs?metadata.KEY=VALUE` and `POST /jobs` with a `notify_url`."""

    async def test_list_filtered_by_metadata(self, tmp_path: Path) -> None:
        async with (
            running_receiver(tmp_path) as live,
            httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client,
        ):
            made = {}
            for task, customer in (("t1", "acme"), ("t2", "globex"), ("t3", "acme")):
                answer = await client.post(
                    "/jobs",
                    json={
                        "provider": "rixapi",
                        "task_id": task,
                        "metadata": {"customer": customer},
                    },
                )
                assert 201 == answer.status_code, answer.text
                made[task] = answer.json()["id"]
            acme = await client.get("/jobs", params={"metadata.customer": "acme"})
            both = await client.get("/jobs", params={"metadata.customer": "acme", "task_id": "t3"})
            bad = await client.get("/jobs", params={'metadata.a"b': "x"})
        assert [made["t3"], made["t1"]] == [job["id"] for job in acme.json()["items"]]
        assert [made["t3"]] == [job["id"] for job in both.json()["items"]]
        assert 400 == bad.status_code
        assert "metadata key" in bad.json()["error"]

    async def test_notify_url_gets_every_event_signed(self, tmp_path: Path) -> None:
        """A job's notify_url gets each of its events, signed with the forward secret."""
        secret = mint_whsec()
        async with downstream() as down:
            env = {"RECEIVER_FORWARD_SECRET": secret}
            async with (
                running_receiver(tmp_path, env=env) as live,
                httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client,
            ):
                created = await client.post(
                    "/jobs",
                    json={
                        "provider": "rixapi",
                        "task_id": "t1",
                        "notify_url": down.url + "/jobs/t1?tenant=7",
                    },
                )
                assert 201 == created.status_code, created.text
                job = created.json()
                other = await client.post("/jobs", json={"provider": "rixapi", "task_id": "t2"})
                for job_id in (job["id"], other.json()["id"]):
                    for status in ("running", "succeeded"):
                        answer = await client.post(
                            f"/jobs/{job_id}/trigger", json={"status": status}
                        )
                        assert 200 == answer.status_code, answer.text
                await _until(lambda: len(down.seen) >= 2)
                await asyncio.sleep(0.2)  # nothing more arrives (the other job has no URL)
        assert down.url + "/jobs/t1?tenant=7" == job["notify_url"]
        assert ["/jobs/t1?tenant=7"] * 2 == [seen.path for seen in down.seen]
        verified = [standardwebhooks.Webhook(secret).verify(s.body, s.headers) for s in down.seen]
        assert [("job.running", job["id"]), ("job.succeeded", job["id"])] == [
            (body["type"], body["data"]["job"]["id"]) for body in verified
        ]

    @pytest.mark.parametrize(
        ("notify_url", "env", "expected"),
        [
            ("https://hooks.test/x", {}, "notify_url needs RECEIVER_FORWARD_SECRET"),
            ("ftp://hooks.test/x", {"RECEIVER_FORWARD_SECRET": mint_whsec()}, "http(s)"),
            (
                "https://me:pa55@hooks.test/x",
                {"RECEIVER_FORWARD_SECRET": mint_whsec()},
                "must not carry credentials",
            ),
        ],
    )
    async def test_bad_notify_url(
        self, tmp_path: Path, notify_url: str, env: dict[str, str], expected: str
    ) -> None:
        async with (
            running_receiver(tmp_path, env=env) as live,
            httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client,
        ):
            answer = await client.post(
                "/jobs", json={"provider": "rixapi", "task_id": "t1", "notify_url": notify_url}
            )
            listed = await client.get("/jobs")
        assert 400 == answer.status_code
        assert expected in answer.json()["error"]
        assert "pa55" not in answer.text
        assert [] == listed.json()["items"]


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


class TestCli:
    """`receiver jobs --metadata` and `receiver submit --notify-url`, as subprocesses."""

    async def test_jobs_filtered_by_metadata(self, tmp_path: Path) -> None:
        env = {"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "RECEIVER_HANDLERS": ""}
        ids = {}
        for task, customer in (("t1", "acme"), ("t2", "globex")):
            code, out, err = await run_cli(
                "submit", "rixapi", "--task-id", task, "--metadata", f"customer={customer}", "-q",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert 0 == code, err
            ids[customer] = out.strip()
        code, out, err = await run_cli(
            "jobs", "--metadata", "customer=acme", "--json", env=env, cwd=tmp_path
        )
        assert 0 == code, err
        assert [ids["acme"]] == [job["id"] for job in json.loads(out)["items"]]
        code, _, err = await run_cli("jobs", "--metadata", "customer", env=env, cwd=tmp_path)
        assert (2, "receiver: --metadata must look like KEY=VALUE, got 'customer'\n") == (code, err)

    async def test_submit_notify_url_needs_the_forward_secret(self, tmp_path: Path) -> None:
        env = {"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "RECEIVER_HANDLERS": ""}
        args = ("submit", "rixapi", "--task-id", "t1", "--notify-url", "https://hooks.test/x")
        code, _, err = await run_cli(*args, env=env, cwd=tmp_path)
        assert 2 == code
        assert "notify_url needs RECEIVER_FORWARD_SECRET" in err
        code, out, err = await run_cli(
            *args, "--json", env={**env, "RECEIVER_FORWARD_SECRET": mint_whsec()}, cwd=tmp_path
        )
        assert 0 == code, err
        assert "https://hooks.test/x" == json.loads(out)["notify_url"]
