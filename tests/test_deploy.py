"""deploy/: the Dockerfile, compose file and Kubernetes manifests, checked without a
container engine (none is available to the tests): they parse, their commands are ones
the `receiver` CLI accepts, and probes, ports and settings agree with each other."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.cli import parser
from receiver.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SETTINGS = {f"RECEIVER_{name.upper()}" for name in Settings.__struct_fields__}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by (kind, name)."""
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [only] = obj["spec"]["template"]["spec"]["containers"]
    return dict(only)


def accepts(args: list[str]) -> str:
    """The subcommand the CLI parses `args` as (argparse exits on anything it refuses)."""
    return str(parser().parse_args(args).command)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


class TestDockerfile:
    """The image is slim, runs as a non-root user, checks its health, takes only env."""

    def lines(self) -> list[str]:
        text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
        return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]

    def test_slim_base_non_root_user_and_entrypoint(self) -> None:
        """Every stage is a slim image; the final user is a numeric non-root uid."""
        lines = self.lines()
        bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
        assert bases and all(base.endswith("-slim") for base in bases)
        [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert user.split(":")[0] not in ("0", "root")
        assert 'ENTRYPOINT ["receiver"]' in lines
        assert 'CMD ["serve"]' in lines
        assert any('".[postgres]"' in line for line in lines), "the image needs asyncpg"

    def test_health_check_asks_healthz_on_the_configured_port(self) -> None:
        """HEALTHCHECK requests /healthz on RECEIVER_PORT."""
        [check] = [line for line in self.lines() if line.startswith("HEALTHCHECK ")]
        assert "/healthz" in check
        assert "RECEIVER_PORT" in check

    def test_configuration_only_by_known_variables(self) -> None:
        """ENV sets only receiver settings (no secrets) and Python's own switches."""
        names = set()
        for line in self.lines():
            if line.startswith("ENV "):
                names |= set(re.findall(r"([A-Z_]+)=", line))
        assert {"RECEIVER_HOST", "RECEIVER_PORT"} <= names
        assert set() == {n for n in names if n.startswith("RECEIVER_")} - SETTINGS
        assert not {n for n in names if "SECRET" in n or "TOKEN" in n or "KEY" in n}

    def test_build_context_keeps_only_the_package(self) -> None:
        """The ignore file beside the Dockerfile excludes everything but what is copied."""
        ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        assert "*" in ignore
        copied = {
            source.rstrip("/")
            for line in self.lines()
            if line.startswith("COPY ") and "--from" not in line
            for source in line.split()[1:-1]
        }
        assert {"pyproject.toml", "README.md", "receiver", "handlers"} == copied
        assert all(f"!{name}" in ignore or f"!{name}/" in ignore for name in copied)


class TestCompose:
    """PostgreSQL, a migration, an ingest-only receiver and workers, in the right order."""

    def test_services_and_commands(self, compose: dict[str, Any]) -> None:
        """Each service runs a command the CLI accepts, the one its role needs."""
        services = compose["services"]
        assert {"postgres", "migrate", "receiver", "worker"} == set(services)
        assert ["migrate"] == services["migrate"]["command"]
        assert ["serve", "--no-worker"] == services["receiver"]["command"]
        assert ["worker"] == services["worker"]["command"]
        for name in ("migrate", "receiver", "worker"):
            assert name.replace("receiver", "serve") == accepts(services[name]["command"])

    def test_start_order(self, compose: dict[str, Any]) -> None:
        """Migrate waits for a healthy database; receiver and worker for a finished migrate."""
        services = compose["services"]
        assert "service_healthy" == services["migrate"]["depends_on"]["postgres"]["condition"]
        for name in ("receiver", "worker"):
            condition = services[name]["depends_on"]["migrate"]["condition"]
            assert "service_completed_successfully" == condition

    def test_everyone_uses_the_same_database(self, compose: dict[str, Any]) -> None:
        """The receiver services point RECEIVER_DATABASE_URL at the postgres service."""
        postgres_env = compose["services"]["postgres"]["environment"]
        for name in ("migrate", "receiver", "worker"):
            url = compose["services"][name]["environment"]["RECEIVER_DATABASE_URL"]
            assert url.startswith("postgresql://")
            assert f"@postgres:5432/{postgres_env['POSTGRES_DB']}" in url

    def test_worker_health_check_reads_its_heartbeat(self, compose: dict[str, Any]) -> None:
        """The worker's check looks at the file the worker is told to touch."""
        worker = compose["services"]["worker"]
        path = worker["environment"]["RECEIVER_HEARTBEAT_FILE"]
        assert path in worker["healthcheck"]["test"][-1]


class TestKubernetes:
    """Deployments, a Service, probes and a migration Job that agree with each other."""

    def test_objects(self) -> None:
        """The manifests hold the expected objects."""
        assert {
            ("ConfigMap", "receiver-config"),
            ("Secret", "receiver-secrets"),
            ("Deployment", "receiver"),
            ("Deployment", "receiver-worker"),
            ("Service", "receiver"),
            ("Job", "receiver-migrate"),
        } == set(k8s())

    def test_commands(self) -> None:
        """Receivers only ingest, workers run `worker`, the Job runs `migrate`."""
        objects = k8s()
        receiver = container(objects[("Deployment", "receiver")])
        worker = container(objects[("Deployment", "receiver-worker")])
        job = container(objects[("Job", "receiver-migrate")])
        assert ["serve", "--no-worker"] == receiver["args"]
        assert ("serve", "worker", "migrate") == tuple(
            accepts(c["args"]) for c in (receiver, worker, job)
        )
        assert 1 == len({c["image"] for c in (receiver, worker, job)})

    def test_probes(self) -> None:
        """Readiness asks /healthz on the serving port; liveness only that it listens."""
        objects = k8s()
        receiver = container(objects[("Deployment", "receiver")])
        env = {item["name"]: item["value"] for item in receiver["env"]}
        [port] = receiver["ports"]
        assert int(env["RECEIVER_PORT"]) == port["containerPort"]
        assert "0.0.0.0" == env["RECEIVER_HOST"]
        ready = receiver["readinessProbe"]["httpGet"]
        assert ("/healthz", port["name"]) == (ready["path"], ready["port"])
        assert port["name"] == receiver["livenessProbe"]["tcpSocket"]["port"]

    def test_worker_liveness_reads_its_heartbeat(self) -> None:
        """The worker's exec probe checks the file RECEIVER_HEARTBEAT_FILE names, on a volume."""
        worker = container(k8s()[("Deployment", "receiver-worker")])
        env = {item["name"]: item["value"] for item in worker["env"]}
        path = env["RECEIVER_HEARTBEAT_FILE"]
        assert path in shlex.join(worker["livenessProbe"]["exec"]["command"])
        mounts = [m["mountPath"] for m in worker["volumeMounts"]]
        assert any(path.startswith(mount + "/") for mount in mounts)

    def test_service_reaches_the_receivers(self) -> None:
        """The Service selects the receiver pods (not workers) and targets the named port."""
        objects = k8s()
        service = objects[("Service", "receiver")]["spec"]
        receiver = objects[("Deployment", "receiver")]["spec"]["template"]["metadata"]["labels"]
        worker = objects[("Deployment", "receiver-worker")]["spec"]["template"]["metadata"]
        assert service["selector"].items() <= receiver.items()
        assert not service["selector"].items() <= worker["labels"].items()
        assert "http" == service["ports"][0]["targetPort"]

    def test_configuration_is_env_from_config_and_secret(self) -> None:
        """Every container reads the ConfigMap and the Secret, whose keys are settings."""
        objects = k8s()
        for key in (("Deployment", "receiver"), ("Deployment", "receiver-worker")):
            refs = container(objects[key])["envFrom"]
            assert [{"configMapRef": {"name": "receiver-config"}}] == refs[:1]
            assert {"secretRef": {"name": "receiver-secrets"}} == refs[1]
        keys = set(objects[("ConfigMap", "receiver-config")]["data"])
        keys |= set(objects[("Secret", "receiver-secrets")]["stringData"])
        assert set() == keys - SETTINGS
        assert {"RECEIVER_DATABASE_URL", "RECEIVER_ADMIN_TOKEN"} <= keys

    def test_non_root_everywhere(self) -> None:
        """Every pod runs as a non-root user with a read-only root filesystem."""
        objects = k8s()
        for key in (
            ("Deployment", "receiver"),
            ("Deployment", "receiver-worker"),
            ("Job", "receiver-migrate"),
        ):
            pod = objects[key]["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert container(objects[key])["securityContext"]["readOnlyRootFilesystem"] is True
