"""`/metrics` over real HTTP: Prometheus text that a real parser reads, counters that move."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import run_cli
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from receiver.dispatch import Registry
from receiver.errors import Retry
from receiver.metrics import METRICS, provider_label
from receiver.models import Event, Job, Status, Update, new_id, now
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.store import NewJob, Write
from receiver.testing import LiveReceiver, running_receiver
from receiver.verify import digest

SECRET = "metrics-test-secret"
SCRAPE_TOKEN = "scrape-only-token-" + "s" * 32

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Handlers:
    """A handler that asks for one retry per event, then succeeds."""

    def __init__(self, registry: Registry) -> None:
        self.tries: dict[str, int] = {}

        @registry.on("*")
        async def once_more(event: Event, job: Job) -> None:
            self.tries[event.id] = self.tries.get(event.id, 0) + 1
            if self.tries[event.id] == 1:
                raise Retry(defer=0.0)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys={"apiframe": "k"}, lose=True)) as running:
        yield running


@pytest.fixture
async def live(tmp_path: Path, sim: RunningSimulator) -> AsyncIterator[LiveReceiver]:
    registry = Registry()
    Handlers(registry)
    env = {
        "RECEIVER_METRICS_TOKEN": SCRAPE_TOKEN,
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": "k",
    }
    async with running_receiver(tmp_path, handlers=registry, env=env) as receiver:
        yield receiver


async def exposition(live: LiveReceiver, token: str | None = None) -> str:
    """The text of /metrics, as Prometheus gets it."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        answer = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {token or live.admin_token}"}
        )
    assert 200 == answer.status_code
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


async def scrape(live: LiveReceiver, token: str | None = None) -> Samples:
    """Every sample of /metrics, parsed by the Prometheus client's own parser."""
    text = await exposition(live, token)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def add_job(live: LiveReceiver, token: str) -> str:
    at = now()
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id=f"task-{token}",
        status=Status.QUEUED,
        created_at=at,
        updated_at=at,
    )
    await live.runtime.store.create_job(
        NewJob(job=job, token_hash=digest(token), secret_hash=digest(SECRET))
    )
    return job.id


async def dead_delivery(live: LiveReceiver, token: str) -> str:
    """A job with one event whose delivery is dead; the delivery's id."""
    job_id = await add_job(live, token)
    await live.runtime.store.record(
        Write(
            update=Update(status=Status.RUNNING, raw_status="processing"),
            source="poll",
            job_id=job_id,
        ),
        route=lambda event, job: ["a.handler"],
    )
    [delivery] = await live.runtime.store.list_deliveries(job_id=job_id)
    await live.runtime.store.kill_delivery(delivery.id, error="x", at=now())
    return delivery.id


async def post(live: LiveReceiver, path: str, body: Any, secret: str = SECRET) -> int:
    async with httpx.AsyncClient(base_url=live.url) as client:
        answer = await client.post(path, json=body, headers={"x-webhook-secret": secret})
    return answer.status_code


class TestAccess:
    """/metrics answers the admin token or the scrape-only token, and nobody else."""

    @pytest.mark.parametrize("header", [None, "Bearer wrong", SCRAPE_TOKEN])
    async def test_refused_without_a_token(self, live: LiveReceiver, header: str | None) -> None:
        """No token, a wrong one, or a badly framed one is a 401."""
        async with httpx.AsyncClient(base_url=live.url) as client:
            headers = {"Authorization": header} if header else {}
            assert 401 == (await client.get("/metrics", headers=headers)).status_code

    async def test_scrape_token_works(self, live: LiveReceiver) -> None:
        """RECEIVER_METRICS_TOKEN reads the metrics but opens no admin route."""
        samples = await scrape(live, SCRAPE_TOKEN)
        assert ("receiver_deliveries_by_state", (("state", "dead"),)) in samples
        async with httpx.AsyncClient(base_url=live.url) as client:
            headers = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
            assert 401 == (await client.get("/jobs", headers=headers)).status_code


class TestCounters:
    """Callbacks, latencies, deliveries and polls are counted as they happen."""

    async def test_callbacks_by_provider_and_outcome(self, live: LiveReceiver) -> None:
        """An applied callback, a wrong secret and an unknown provider each count once."""
        before = await scrape(live)
        await add_job(live, "tok1")
        body = {"task_id": "task-tok1", "status": "processing", "percentage": "40"}
        assert 200 == await post(live, "/hooks/apiframe/tok1", body)
        assert 401 == await post(live, "/hooks/apiframe/tok1", body, secret="nope")
        assert 404 == await post(live, "/hooks/not-a-provider-xyz/tok1", body)
        after = await scrape(live)
        for provider, outcome in (
            ("apiframe", "applied"),
            ("apiframe", "wrong_secret"),
            ("unknown", "unknown_provider"),
        ):
            name = "receiver_callbacks_total"
            moved = value(after, name, provider=provider, outcome=outcome) - value(
                before, name, provider=provider, outcome=outcome
            )
            assert 1.0 == moved, (provider, outcome)
        count = "receiver_callback_ack_seconds_count"
        assert 2.0 == value(after, count, provider="apiframe") - value(
            before, count, provider="apiframe"
        )
        inf = value(after, "receiver_callback_ack_seconds_bucket", provider="apiframe", le="+Inf")
        assert value(after, count, provider="apiframe") == inf
        assert all("not-a-provider" not in str(key) for key in after)

    async def test_deliveries_and_gauges(self, live: LiveReceiver) -> None:
        """A retry then a success are counted per handler; dead and pending are gauges."""
        before = await scrape(live)
        job_id = await add_job(live, "tok2")
        await live.runtime.ingest.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="processing"),
                source="poll",
                job_id=job_id,
            )
        )
        for _ in range(200):
            if [d.state.value for d in await live.runtime.store.list_deliveries()] == ["done"]:
                break
            await asyncio.sleep(0.05)
        [delivery] = await live.runtime.store.list_deliveries()
        # A delivery for a handler nobody registered stays pending; one more is killed.
        await live.runtime.store.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="processing", progress=0.5),
                source="poll",
                job_id=job_id,
                at=now() - 30,
            ),
            route=lambda event, job: ["nobody.registered", "other.handler"],
        )
        pending = await live.runtime.store.list_deliveries(job_id=job_id)
        await live.runtime.store.kill_delivery(pending[-1].id, error="x", at=now())
        after = await scrape(live)
        name = "receiver_deliveries_total"
        for outcome in ("retry", "done"):
            moved = value(after, name, handler=delivery.handler, outcome=outcome) - value(
                before, name, handler=delivery.handler, outcome=outcome
            )
            assert 1.0 == moved, outcome
        assert 1.0 == value(after, "receiver_deliveries_by_state", state="dead")
        assert 1.0 == value(after, "receiver_deliveries_by_state", state="pending")
        assert value(after, "receiver_oldest_pending_delivery_age_seconds") >= 29.0

    async def test_polls_by_provider_and_outcome(
        self, live: LiveReceiver, sim: RunningSimulator
    ) -> None:
        """A pull the provider answers counts as ok; one it cannot answer counts as an error."""
        before = await scrape(live)
        submitted = await live.runtime.submitter.submit("apiframe", {"prompt": "x"})
        await live.runtime.poller.poll(submitted.job)
        unknown = submitted.job.__copy__()
        unknown.task_id = "not-a-task-the-simulator-knows"
        await live.runtime.poller.poll(unknown)
        after = await scrape(live)
        name = "receiver_polls_total"
        for outcome in ("ok", "error"):
            moved = value(after, name, provider="apiframe", outcome=outcome) - value(
                before, name, provider="apiframe", outcome=outcome
            )
            assert 1.0 == moved, outcome

    async def test_replays_are_counted(self, live: LiveReceiver) -> None:
        """Each delivery a replay puts back counts once."""
        delivery_id = await dead_delivery(live, "tok3")
        before = value(await scrape(live), "receiver_replays_total")
        async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
            await client.post(f"/deliveries/{delivery_id}/replay")
        assert 1.0 == value(await scrape(live), "receiver_replays_total") - before

    async def test_a_cli_replay_on_the_database_is_counted(
        self, live: LiveReceiver, tmp_path: Path
    ) -> None:
        """`receiver replay` run on the database file, not through the receiver, counts too:
        the count is the store's, moved in the replay's own transaction."""
        delivery_id = await dead_delivery(live, "tok5")
        before = value(await scrape(live), "receiver_replays_total")
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_HANDLERS": "",
        }
        code, out, err = await run_cli("replay", delivery_id, env=env, cwd=tmp_path)
        assert 0 == code, err
        assert delivery_id in out
        assert 1.0 == value(await scrape(live), "receiver_replays_total") - before


class TestHandlerDuration:
    """Each handler run is timed into a histogram by handler and outcome."""

    async def test_retry_then_done_are_timed(self, live: LiveReceiver) -> None:
        """The retried run and the successful one land in their own series, summed."""
        before = await scrape(live)
        job_id = await add_job(live, "tok4")
        await live.runtime.ingest.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="processing"),
                source="poll",
                job_id=job_id,
            )
        )
        for _ in range(200):
            if [d.state.value for d in await live.runtime.store.list_deliveries()] == ["done"]:
                break
            await asyncio.sleep(0.05)
        [delivery] = await live.runtime.store.list_deliveries()
        after = await scrape(live)
        name = "receiver_handler_duration_seconds"
        for outcome in ("retry", "done"):
            labels = {"handler": delivery.handler, "outcome": outcome}
            count = value(after, f"{name}_count", **labels) - value(
                before, f"{name}_count", **labels
            )
            assert 1.0 == count, outcome
            assert value(after, f"{name}_bucket", le="+Inf", **labels) == value(
                after, f"{name}_count", **labels
            )
            assert 0.0 <= value(after, f"{name}_sum", **labels) < 5.0


class TestStoreGauges:
    """Jobs and deliveries are counted from the store, so every process's changes show."""

    async def test_jobs_by_status(self, live: LiveReceiver) -> None:
        """A new job is counted as queued; every status is named, with 0 when there is none."""
        before = await scrape(live)
        await add_job(live, "tok5")
        after = await scrape(live)
        assert 1.0 == value(after, "receiver_jobs", status="queued") - value(
            before, "receiver_jobs", status="queued"
        )
        assert {s.value for s in Status} == {
            dict(labels)["status"] for name, labels in after if name == "receiver_jobs"
        }

    async def test_a_cli_replay_on_the_database_shows(
        self, live: LiveReceiver, tmp_path: Path
    ) -> None:
        """`receiver replay` run on the database moves the dead gauge, which the store counts."""
        job_id = await add_job(live, "tok6")
        await live.runtime.store.record(
            Write(
                update=Update(status=Status.RUNNING, raw_status="processing"),
                source="poll",
                job_id=job_id,
            ),
            route=lambda event, job: ["gone.handler"],
        )
        [delivery] = await live.runtime.store.list_deliveries()
        await live.runtime.store.kill_delivery(delivery.id, error="x", at=now())
        assert 1.0 == value(await scrape(live), "receiver_deliveries_by_state", state="dead")
        env = {
            **os.environ,
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_HANDLERS": "",
        }
        env.pop("RECEIVER_URL", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "replay",
            "--all-dead",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert 0 == process.returncode, err.decode()
        assert 0.0 == value(await scrape(live), "receiver_deliveries_by_state", state="dead")


class TestBuildAndProcess:
    """Build information and the standard process metrics are exported."""

    async def test_build_info(self, live: LiveReceiver) -> None:
        """One sample, value 1, naming the package version and the Python version."""
        samples = await scrape(live)
        [(labels, one)] = [
            (dict(k), v) for (n, k), v in samples.items() if n == "receiver_build_info"
        ]
        assert (platform.python_version(), 1.0) == (labels["python"], one)
        assert labels["version"] not in ("", "unknown")

    @pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="read from /proc")
    async def test_process_metrics(self, live: LiveReceiver) -> None:
        """CPU, memory, files and start time, with values this process can vouch for."""
        samples = await scrape(live)
        fds = len(os.listdir("/proc/self/fd"))
        assert 0.0 < value(samples, "process_cpu_seconds_total")
        assert 10e6 < value(samples, "process_resident_memory_bytes")
        assert value(samples, "process_resident_memory_bytes") <= value(
            samples, "process_virtual_memory_bytes"
        )
        # The scrape runs in this process: its descriptors are ours, give or take the listing.
        assert abs(value(samples, "process_open_fds") - fds) <= 20
        assert value(samples, "process_open_fds") < value(samples, "process_max_fds")
        started = value(samples, "process_start_time_seconds")
        assert time.time() - 3600 < started <= time.time()


class TestRegistryRules:
    """The page passes the Prometheus client's own registry: no two families share a name."""

    async def test_every_family_registers(self, live: LiveReceiver) -> None:
        """Each parsed family goes into one fresh registry; a clashing name raises there."""
        await add_job(live, "tok7")
        families = list(text_string_to_metric_families(await exposition(live)))
        registry = CollectorRegistry()
        for family in families:
            registry.register(_Family(family))
        names = {family.name for family in families}
        assert {"receiver_deliveries", "receiver_deliveries_by_state", "receiver_jobs"} <= names
        assert not {"receiver_deliveries_pending", "receiver_deliveries_dead"} & names

    def test_a_clash_is_caught(self) -> None:
        """A gauge named like a counter's family is refused, so the test above can fail."""
        text = "# TYPE x_total counter\nx_total 1\n# TYPE x gauge\nx 2\n"
        registry = CollectorRegistry()
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            for family in text_string_to_metric_families(text):
                registry.register(_Family(family))


class _Family:
    """A collector that yields one parsed family, and describes it so the registry checks it."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family

    def describe(self) -> Iterator[Metric]:
        yield self.family


class TestLabels:
    """Label values from outside are bounded; rendering is valid for odd values."""

    def test_unknown_providers_share_one_label(self) -> None:
        """Any provider name that is not configured becomes "unknown"."""
        assert ("apiframe", "unknown", "unknown") == (
            provider_label("apiframe"),
            provider_label("x" * 1000),
            provider_label('a"b\n'),
        )

    def test_escaped_label_values_parse(self) -> None:
        """A handler name with quotes, backslashes and newlines still renders parseable text."""
        METRICS.delivery('odd"handler\\with\nnewline', "done", 0.01)
        text = METRICS.render({"pending": 0, "dead": 0}, None)
        names = {
            (sample.name, sample.labels.get("handler"))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert ("receiver_deliveries_total", 'odd"handler\\with\nnewline') in names


class TestGrafanaDashboard:
    """The sample dashboard only queries metrics the receiver exports."""

    def test_every_queried_metric_exists(self) -> None:
        """Each receiver_* name in the dashboard's queries is in the exposition."""
        path = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        queried = {name for expr in exprs for name in re.findall(r"receiver_[a-z_]+", expr)}
        METRICS.callback("apiframe", "applied", 0.01)
        METRICS.delivery("a.handler", "done", 0.01)
        METRICS.poll("apiframe", "ok")
        text = METRICS.render({"pending": 0, "dead": 0}, None, {"queued": 0})
        exported = {
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert queried and queried <= exported, queried - exported
