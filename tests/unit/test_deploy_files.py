"""The deployment files agree with the code: metric names, ports, health paths, GPUs.

The tools (hadolint, docker compose config, kubernetes-validate, promtool)
run in ``make lint``; these checks catch what a schema cannot: a dashboard
or alert that queries a metric Conveyor does not export, a probe on a path
the API does not serve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bconveyor_[a-z_]+\b")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    """(metric names on /metrics, API paths) of an app on an empty database."""
    tmp = tmp_path_factory.mktemp("deploy")
    settings = load_settings(data_dir=tmp)
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    with TestClient(create_app(runtime)) as client:
        text = client.get("/metrics").text
        paths = set(client.get("/openapi.json").json()["paths"])
    names = set(METRIC.findall(text))
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" histogram"):
            base = line.split()[2]
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names, paths


def _referenced(path: Path) -> set[str]:
    return set(METRIC.findall(path.read_text()))


@pytest.mark.parametrize("name", ["monitoring/grafana-dashboard.json", "monitoring/alerts.yaml"])
def test_dashboards_and_alerts_query_exported_metrics(
    name: str, exported: tuple[set[str], set[str]]
) -> None:
    used = _referenced(DEPLOY / name)
    assert used, f"{name} queries no Conveyor metric"
    assert used <= exported[0], f"{name} queries unknown metrics: {sorted(used - exported[0])}"


def test_dashboard_is_importable_json() -> None:
    dash = json.loads((DEPLOY / "monitoring/grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"] for t in p["targets"])
        # replicas report identical numbers: summing across them would double count
        for t in p["targets"]:
            assert not re.match(r"^\s*sum\(conveyor_", t["expr"]), t["expr"]


def test_compose_stack_shape() -> None:
    doc = yaml.safe_load((DEPLOY / "docker/compose.yaml").read_text())
    services = doc["services"]
    assert {"api", "worker", "worker-gpu", "postgres", "minio", "migrate"} <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")
        hc = svc.get("healthcheck", {})
        if name in ("api", "postgres", "minio"):
            assert hc.get("test") and not hc.get("disable"), name
    assert "/api/ready" in " ".join(services["api"]["healthcheck"]["test"])
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    text = (DEPLOY / "docker/compose.yaml").read_text()
    secret_keys = re.findall(r"(?m)^\s+([A-Z_]*(?:PASSWORD|SECRET)[A-Z_]*):\s*(.+)$", text)
    assert secret_keys
    for key, val in secret_keys:
        assert val.startswith("${"), f"{key} must come from .env, not be written here"


def test_env_file_is_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/docker/.env" in ignored


def test_probes_use_paths_the_api_serves(exported: tuple[set[str], set[str]]) -> None:
    paths = exported[1]
    assert {"/api/health", "/api/ready", "/api/v1/monitoring/health", "/metrics"} <= paths
    for doc in yaml.safe_load_all((DEPLOY / "k8s/api.yaml").read_text()):
        if doc["kind"] != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] in paths
        assert doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in paths
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / "docker" / dockerfile).read_text()
        assert "/api/health" in text and "USER 10001" in text and "HEALTHCHECK" in text


def test_gpu_worker_requests_a_gpu() -> None:
    (doc,) = yaml.safe_load_all((DEPLOY / "k8s/gpu-worker.yaml").read_text())
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":cuda")


def test_systemd_units_run_the_cli() -> None:
    units = {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("*.service")}
    assert {"conveyor-api.service", "conveyor-worker@.service"} <= set(units)
    assert "conveyor serve" in units["conveyor-api.service"]
    assert "conveyor worker" in units["conveyor-worker@.service"]
    for text in units.values():
        assert "User=conveyor" in text and "EnvironmentFile=" in text


def test_every_worker_sets_its_container_runner_and_never_the_local_one() -> None:
    """No deployed worker falls back to running submitters' commands on its host
    (issue 13): each says `docker` or `off`, and none says `local`."""
    compose = yaml.safe_load((DEPLOY / "docker/compose.yaml").read_text())["services"]
    found = {
        f"compose:{name}": str(svc["environment"].get("CONVEYOR_CONTAINER_RUNNER"))
        for name, svc in compose.items()
        if name.startswith("worker")
    }
    for name in ("worker.yaml", "gpu-worker.yaml"):
        (container,) = yaml.safe_load((DEPLOY / "k8s" / name).read_text())["spec"]["template"][
            "spec"
        ]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        found[f"k8s:{name}"] = str(env.get("CONVEYOR_CONTAINER_RUNNER"))
    for unit in sorted((DEPLOY / "systemd").glob("*worker*.service")):
        m = re.search(r"(?m)^Environment=CONVEYOR_CONTAINER_RUNNER=(\w+)$", unit.read_text())
        found[f"systemd:{unit.name}"] = m.group(1) if m else "None"
    assert len(found) == 6, found
    assert set(found.values()) <= {"docker", "off"}, found
    # the API refuses at submit what only the local runner could run
    assert compose["api"]["environment"]["CONVEYOR_CONTAINER_RUNNER"] == "docker"
    api = (DEPLOY / "systemd/conveyor-api.service").read_text()
    assert "Environment=CONVEYOR_CONTAINER_RUNNER=docker" in api
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".service", ".example", ""):
            text = path.read_text(errors="replace")
            assert not re.search(r"CONTAINER_RUNNER[=:]\s*\"?local", text), path
