"""Spend and budgets: estimated and final costs, budgets refusing submissions (402, CLI
exit 6), `receiver costs` and the spend gauge, against the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_cli import run_cli
from test_metrics import _Family

from receiver.config import load_settings
from receiver.costs import DAY, Budget, BudgetExceeded, estimate, parse_budgets
from receiver.errors import ConfigError
from receiver.models import Job, Status, Update, new_id
from receiver.providers import ProviderSettings
from receiver.simulator import RunningSimulator, SimConfig, run_simulator
from receiver.store.base import NewJob, Store, Write
from receiver.testing import TEST_ADMIN_TOKEN, LiveReceiver, running_receiver

# 0.5 per job and 0.1 per second: a 5-second apiframe video is estimated at 1.0.
PRICES = {"RECEIVER_APIFRAME_PRICE_PER_JOB": "0.5", "RECEIVER_APIFRAME_PRICE_PER_SECOND": "0.1"}
VIDEO = {"prompt": "a fox", "generation_type": "text2video", "duration": 5}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimConfig(api_keys={"apiframe": "af"}, step_delay=0.05)) as running:
        yield running


def receiver_env(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_APIFRAME_BASE_URL": sim.base_url("apiframe"),
        "RECEIVER_APIFRAME_API_KEY": "af",
        **PRICES,
        **extra,
    }


async def post_job(live: LiveReceiver, **metadata: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        return await client.post(
            "/jobs", json={"provider": "apiframe", "input": VIDEO, "metadata": metadata}
        )


async def get(live: LiveReceiver, path: str) -> Any:
    async with httpx.AsyncClient(base_url=live.url, headers=live.admin_headers) as client:
        answer = await client.get(path)
    assert 200 == answer.status_code, answer.text
    return answer.json() if "json" in answer.headers["content-type"] else answer.text


async def until_ended(live: LiveReceiver, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = await get(live, f"/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


class TestJobCosts:
    """A job carries its estimated cost from submission and its final cost once it ends."""

    async def test_estimate_at_submission_and_final_cost_at_success(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """Price per job plus price per second times the input's duration, kept when it succeeds."""
        async with running_receiver(tmp_path, env=receiver_env(sim)) as live:
            answer = await post_job(live)
            assert 201 == answer.status_code, answer.text
            created = answer.json()
            assert (1.0, None) == (created["estimated_cost"], created["cost"])
            job = await until_ended(live, created["id"])
        assert ("succeeded", 1.0, 1.0) == (job["status"], job["estimated_cost"], job["cost"])

    async def test_a_failed_job_costs_nothing(self, tmp_path: Path, sim: RunningSimulator) -> None:
        """A job the provider failed keeps its estimate but its final cost is 0."""
        sim.config.fail = True
        async with running_receiver(tmp_path, env=receiver_env(sim)) as live:
            created = (await post_job(live)).json()
            job = await until_ended(live, created["id"])
        assert ("failed", 1.0, 0.0) == (job["status"], job["estimated_cost"], job["cost"])

    async def test_a_provider_without_a_price_has_no_cost(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """No price configured: neither an estimate nor a final cost, rather than a made-up 0."""
        env = {k: v for k, v in receiver_env(sim).items() if k not in PRICES}
        async with running_receiver(tmp_path, env=env) as live:
            created = (await post_job(live)).json()
            job = await until_ended(live, created["id"])
        assert (None, None) == (job["estimated_cost"], job["cost"])


class TestEstimates:
    """The estimate reads each provider's own duration field, and errs high without it."""

    @pytest.mark.parametrize(
        ("provider", "fields", "expected"),
        [
            ("apiframe", {"duration": 5}, 1.0),
            ("apiframe", {}, 1.5),  # 5 or 10 documented: the longer is assumed
            ("rixapi", {"options": {"seconds": 4}}, 0.9),
            ("rixapi", {"options": {"seconds": "5"}}, 1.0),  # rixapi's numbers come as strings
            ("aivideoapi", {"time": 3}, 0.8),
            ("runway_ai", {"duration": 2}, 0.7),
            ("artvisum", {"prompt": "x"}, 0.5),  # no duration field: the per-job price alone
        ],
    )
    def test_duration_fields(self, provider: str, fields: dict[str, Any], expected: float) -> None:
        price = ProviderSettings(price_per_job=0.5, price_per_second=0.1)
        assert expected == pytest.approx(estimate(provider, price, fields))


class TestBudgetRefusals:
    """A submission that would pass a budget is refused with 402, naming it; nothing is made."""

    async def test_daily_budget_refuses_the_job_that_would_pass_it(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """Room for one job of 1.0 in 1.5: the second is refused and never reaches the provider."""
        env = receiver_env(sim, RECEIVER_BUDGET_DAILY="1.5")
        async with running_receiver(tmp_path, env=env) as live:
            assert 201 == (await post_job(live)).status_code
            refused = await post_job(live)
            jobs = (await get(live, "/jobs"))["items"]
        assert 402 == refused.status_code
        body = refused.json()
        assert "budget daily" in body["error"]
        assert ("daily", 1.5, 1.0, 1.0) == (
            body["extra"]["budget"],
            body["extra"]["limit"],
            body["extra"]["spent"],
            body["extra"]["estimated_cost"],
        )
        assert 1 == len(jobs)
        assert 1 == len(sim.tasks()), "no create call for the refused job"

    async def test_metadata_budget_counts_only_its_value(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """customer=acme has room for one job; globex has no budget and is never refused."""
        env = receiver_env(sim, RECEIVER_BUDGETS="customer=acme:1")
        async with running_receiver(tmp_path, env=env) as live:
            first = await post_job(live, customer="acme")
            second = await post_job(live, customer="acme")
            other = await post_job(live, customer="globex")
        assert (201, 402, 201) == (first.status_code, second.status_code, other.status_code)
        assert "customer=acme" == second.json()["extra"]["budget"]

    async def test_a_failed_job_gives_its_room_back(
        self, tmp_path: Path, sim: RunningSimulator
    ) -> None:
        """Once a job failed (cost 0), its estimate no longer counts against the budget."""
        sim.config.fail = True
        env = receiver_env(sim, RECEIVER_BUDGET_DAILY="1")
        async with running_receiver(tmp_path, env=env) as live:
            created = (await post_job(live)).json()
            await until_ended(live, created["id"])
            again = await post_job(live)
        assert 201 == again.status_code, again.text

    @pytest.mark.parametrize("backend", ["sqlite", "postgres"])
    async def test_concurrent_submissions_cannot_both_pass(
        self, tmp_path: Path, sim: RunningSimulator, store_url: str
    ) -> None:
        """Eight submissions at once against room for one: exactly one job is made."""
        env = receiver_env(sim, RECEIVER_BUDGET_DAILY="1", RECEIVER_DATABASE_URL=store_url)
        async with running_receiver(tmp_path, env=env) as live:
            answers = await asyncio.gather(*(post_job(live) for _ in range(8)))
            jobs = (await get(live, "/jobs"))["items"]
        assert [201] + [402] * 7 == sorted(a.status_code for a in answers)
        assert 1 == len(jobs)
        assert 1 == len(sim.tasks())


def _job(at: float, cost: float, **metadata: str) -> NewJob:
    job = Job(
        id=new_id("job"),
        provider="apiframe",
        task_id=None,
        status=Status.QUEUED,
        metadata=metadata,
        created_at=at,
        updated_at=at,
        estimated_cost=cost,
    )
    return NewJob(
        job=job, budgets=(Budget("daily", 1.0), Budget("customer=acme", 1.0, "customer", "acme"))
    )


class TestStoreBudgets:
    """Store.create_job checks and inserts in one step, on both backends."""

    async def test_two_stores_on_one_database_cannot_both_pass(
        self, make_store: Callable[[], Store]
    ) -> None:
        """Two processes' stores racing for room for one: one insert, one BudgetExceeded."""
        first, second = make_store(), make_store()
        await first.open()
        await second.open()
        try:
            at = time.time()
            outcomes = await asyncio.gather(
                *(
                    s.create_job(_job(at, 1.0, customer="acme"))
                    for s in (first, second, first, second)
                ),
                return_exceptions=True,
            )
            page = await first.list_jobs()
        finally:
            await first.close()
            await second.close()
        assert 3 == sum(isinstance(o, BudgetExceeded) for o in outcomes), outcomes
        assert 1 == len(page.items)

    async def test_yesterdays_spend_does_not_count(self, store: Store) -> None:
        """Budgets are per UTC day: a job of the day before leaves today's room whole."""
        today = time.time()
        await store.create_job(_job(today - DAY, 1.0))
        await store.create_job(_job(today, 1.0))
        with pytest.raises(BudgetExceeded, match="budget daily"):
            await store.create_job(_job(today, 0.5))

    async def test_spend_by_provider_day_and_metadata(self, store: Store) -> None:
        """`spend` sums per provider, UTC day and value of the key asked for."""
        at = 86400.0 * 20000 + 3600  # 2024-10-04, one hour in
        for customer, cost in (("acme", 1.0), ("acme", 2.0), ("globex", 0.5)):
            new = _job(at, cost, customer=customer)
            new.budgets = ()
            await store.create_job(new)
        rows = await store.spend(since=0, by="customer")
        assert [("2024-10-04", "acme", 2, 3.0), ("2024-10-04", "globex", 1, 0.5)] == [
            (r.day, r.value, r.jobs, r.cost) for r in rows
        ]
        assert [3.5] == [r.cost for r in await store.spend(since=at - 3600)]
        assert [] == await store.spend(since=at + DAY)


class TestFinalCostInTheStore:
    """The final cost is written with the terminal state, on both backends."""

    @pytest.mark.parametrize(("status", "cost"), [(Status.SUCCEEDED, 1.0), (Status.FAILED, 0.0)])
    async def test_terminal_state_sets_the_cost(
        self, store: Store, status: Status, cost: float
    ) -> None:
        new = _job(time.time(), 1.0)
        await store.create_job(new)
        running = await store.record(
            Write(update=Update(Status.RUNNING, "running"), source="poll", job_id=new.job.id),
            route=lambda e, j: [],
        )
        ended = await store.record(
            Write(update=Update(status, status.value), source="poll", job_id=new.job.id),
            route=lambda e, j: [],
        )
        stored = await store.get_job(new.job.id)
        assert stored is not None
        assert (None, cost, cost) == (running.job.cost, ended.job.cost, stored.cost)
        assert 1.0 == stored.estimated_cost


class TestBudgetSettings:
    """Budgets and prices come from RECEIVER_* or receiver.toml; bad ones are named."""

    def test_variables_and_toml_give_the_same_shape(self, tmp_path: Path) -> None:
        toml = tmp_path / "receiver.toml"
        toml.write_text(
            "budget_daily = 100\n[budgets.customer]\nacme = 50\n"
            "[providers.apiframe]\nprice_per_job = 0.25\n"
        )
        from_file = load_settings({}, config_file=toml)
        from_env = load_settings(
            {
                "RECEIVER_BUDGET_DAILY": "100",
                "RECEIVER_BUDGETS": "customer=acme:50",
                "RECEIVER_APIFRAME_PRICE_PER_JOB": "0.25",
            },
            config_file=None,
        )
        for settings in (from_file, from_env):
            assert (100.0, {"customer": {"acme": 50.0}}, 0.25) == (
                settings.budget_daily,
                settings.budgets,
                settings.provider("apiframe").price_per_job,
            )

    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({"RECEIVER_BUDGETS": "customer=acme"}, "RECEIVER_BUDGETS"),
            ({"RECEIVER_BUDGETS": "customer=acme:lots"}, "RECEIVER_BUDGETS"),
            ({"RECEIVER_BUDGET_DAILY": "-1"}, "RECEIVER_BUDGET_DAILY"),
            ({"RECEIVER_APIFRAME_PRICE_PER_SECOND": "-0.1"}, "RECEIVER_APIFRAME_PRICE_PER_SECOND"),
            ({"RECEIVER_APIFRAME_PRICE_PER_JOB": "nan"}, "RECEIVER_APIFRAME_PRICE_PER_JOB"),
        ],
    )
    def test_bad_values_are_named(self, env: dict[str, str], named: str) -> None:
        with pytest.raises(ConfigError, match=named):
            load_settings(env, config_file=None)

    def test_several_values_per_key(self) -> None:
        assert {"customer": {"acme": 50.0, "globex": 2.5}, "team": {"a": 1.0}} == parse_budgets(
            "customer=acme:50, customer=globex:2.5,team=a:1"
        )


class TestCostsCommand:
    """`receiver costs` and the CLI's budget refusal, run as real subprocesses."""

    async def test_costs_and_exit_6(self, tmp_path: Path, sim: RunningSimulator) -> None:
        """A job fits, the next exits 6 naming the budget, and `costs` shows the spend."""
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "RECEIVER_HANDLERS": "",
            "RECEIVER_BUDGETS": "customer=acme:1.5",
            **receiver_env(sim),
        }
        submit = ("submit", "apiframe", "prompt=a fox", "duration=5", "--metadata")
        code, out, err = await run_cli(*submit, "customer=acme", "--json", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert 1.0 == json.loads(out)["estimated_cost"]
        code, out, err = await run_cli(*submit, "customer=acme", env=env, cwd=tmp_path)
        assert 6 == code
        assert "budget customer=acme" in err and "0.5 left" in err
        code, out, err = await run_cli(*submit, "customer=globex", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert 2 == len(sim.tasks())

        code, out, err = await run_cli("costs", "--by", "customer", "--json", env=env, cwd=tmp_path)
        assert 0 == code, err
        report = json.loads(out)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert [(today, "apiframe", "acme", 1), (today, "apiframe", "globex", 1)] == [
            (i["day"], i["provider"], i["value"], i["jobs"]) for i in report["items"]
        ]
        assert 2.0 == report["total"]
        code, out, err = await run_cli("costs", "--by", "customer", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert "CUSTOMER" in out and "acme" in out and "total 2.00" in out
        code, out, err = await run_cli("costs", "--since", "2026-13-01", env=env, cwd=tmp_path)
        assert 2 == code
        assert "--since" in err

    async def test_costs_through_the_admin_api(self, tmp_path: Path, sim: RunningSimulator) -> None:
        """With --url, `costs` reads GET /costs; a bad --by key is refused there (exit 2)."""
        async with running_receiver(tmp_path, env=receiver_env(sim)) as live:
            await post_job(live, customer="acme")
            env = {"RECEIVER_URL": live.url, "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN}
            code, out, err = await run_cli(
                "costs", "--by", "customer", "--json", env=env, cwd=tmp_path
            )
            bad = await run_cli("costs", "--by", "a b", env=env, cwd=tmp_path)
        assert 0 == code, err
        assert [("apiframe", "acme", 1, 1.0)] == [
            (i["provider"], i["value"], i["jobs"], i["estimated"]) for i in json.loads(out)["items"]
        ]
        assert 2 == bad[0]
        assert "metadata key" in bad[2]


class TestSpendMetric:
    """`/metrics` exports the store's spend per provider, and the page still registers."""

    async def test_spend_gauge(self, tmp_path: Path, sim: RunningSimulator) -> None:
        async with running_receiver(tmp_path, env=receiver_env(sim)) as live:
            for _ in range(2):
                created = (await post_job(live)).json()
                await until_ended(live, created["id"])
            text = await get(live, "/metrics")
        families = list(text_string_to_metric_families(text))
        registry = CollectorRegistry()
        for each in families:
            registry.register(_Family(each))  # a clashing family name would raise here
        [family] = [f for f in families if f.name == "receiver_spend_total"]
        assert ("gauge", [({"provider": "apiframe"}, 2.0)]) == (
            family.type,
            [(s.labels, s.value) for s in family.samples],
        )
