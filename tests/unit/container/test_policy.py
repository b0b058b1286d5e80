"""Who picks the runner, which images a deployment accepts, and why a task waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.config import load_settings
from conveyor.errors import InvalidParams
from conveyor.models import Task, WorkerInfo
from conveyor.processors.container import ContainerProcessor
from conveyor.processors.container.params import check_image, internal_registry
from conveyor.processors.container.settings import LOCAL_RUNNER_RISK
from conveyor.service.waiting import why_waiting


@pytest.fixture(autouse=True)
def _no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    for name in ("CONVEYOR_AUTH", "CONVEYOR_CONTAINER_RUNNER", "CONVEYOR_BACKEND_URL"):
        monkeypatch.delenv(name, raising=False)


def processor(tmp_path: Path, **settings: Any) -> ContainerProcessor:
    return ContainerProcessor(load_settings(data_dir=tmp_path, **settings))


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "conveyor-test/busybox:1",
        "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
        "registry.example.com:5000/team/trainer:v1.2",
        "ghcr.io/org/img@sha256:" + "0" * 64,
        "10.0.0.5:5000/team/x",
    ],
)
def test_image_references_that_are_accepted(image: str) -> None:
    assert check_image(image) == image


@pytest.mark.parametrize(
    "image",
    [
        "../../containers/json",
        "a b",
        "busybox\n",
        "busybox@sha256:abc",
        "UPPER/case",
        "a//b",
        "x:" + "t" * 200,
        "/abs",
        "busybox?x=1",
    ],
)
def test_image_references_that_are_refused(image: str) -> None:
    with pytest.raises(ValueError):
        check_image(image)


@pytest.mark.parametrize(
    ("domain", "internal"),
    [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("[::ffff:127.0.0.1]", True),
        ("169.254.169.254", True),
        ("0.0.0.0", True),
        ("127.1", True),
        ("2130706433:80", True),
        ("0x7f.1", True),
        ("registry.localhost", True),
        ("10.0.0.5:5000", False),
        ("ghcr.io", False),
    ],
)
def test_registries_on_this_host_are_told_apart(domain: str, internal: bool) -> None:
    assert (internal_registry(domain) is not None) is internal


def test_submit_refuses_a_loopback_registry_unless_the_operator_allows_it(
    tmp_path: Path,
) -> None:
    p = processor(tmp_path)
    with pytest.raises(InvalidParams, match="CONVEYOR_CONTAINER_LOCAL_REGISTRIES"):
        p.validate({"image": "127.0.0.1:5000/x"}, None)
    with pytest.raises(InvalidParams, match="not an image reference"):
        p.validate({"image": "../../containers/json"}, None)
    allowed = processor(tmp_path, container_local_registries="127.0.0.1:5000")
    assert allowed.validate({"image": "127.0.0.1:5000/x"}, None)["image"] == "127.0.0.1:5000/x"


@pytest.mark.parametrize("runner", ["docker", "off"])
def test_a_deployment_that_runs_docker_only_refuses_what_only_the_local_runner_could_run(
    tmp_path: Path, runner: str
) -> None:
    p = processor(tmp_path, container_runner=runner)
    for params in ({"command": ["id"]}, {"image": "busybox", "command": ["id"], "runner": "local"}):
        with pytest.raises(InvalidParams, match="local runner is off"):
            p.validate(params, None)
    assert p.validate({"image": "busybox", "command": ["id"]}, None)["image"] == "busybox"
    # auto leaves it to the workers (one without an engine never takes it); local runs it
    for accepting in ("auto", "local"):
        ok = processor(tmp_path, container_runner=accepting)
        assert ok.validate({"command": ["id"]}, None)["command"] == ["id"]


def test_the_output_folder_cannot_be_the_root_or_ours(tmp_path: Path) -> None:
    p = processor(tmp_path)
    for folder in ("/", "/conveyor/inputs", "/conveyor/inputs/x", "/conveyor/home"):
        with pytest.raises(InvalidParams, match="outputs"):
            p.validate({"image": "busybox", "outputs": folder}, None)


def test_the_local_runner_under_auth_needs_the_flag_naming_the_risk(tmp_path: Path) -> None:
    for guarded in ({"auth": True}, {"backend_url": "https://api.example.com"}):
        with pytest.raises(ValueError, match="CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED"):
            load_settings(data_dir=tmp_path, container_runner="local", **guarded)
        with pytest.raises(ValueError):
            load_settings(
                data_dir=tmp_path,
                container_runner="local",
                container_local_unsandboxed="yes",
                **guarded,
            )
        ok = load_settings(
            data_dir=tmp_path,
            container_runner="local",
            container_local_unsandboxed=LOCAL_RUNNER_RISK,
            **guarded,
        )
        assert ok.container_runner == "local"
    # without auth (the embedded, loopback-only `conveyor up`) the operator's choice stands
    assert load_settings(data_dir=tmp_path, container_runner="local").container_runner == "local"


def test_a_worker_without_an_engine_does_not_take_container_tasks_and_says_why(
    tmp_path: Path,
) -> None:
    p = processor(tmp_path, docker_host="unix:///nonexistent/docker.sock", gpus="none")
    assert p.probe() is None
    assert "no container engine on this worker" in p.unavailable_reason
    assert "local runner is off" in p.unavailable_reason
    off = processor(tmp_path, container_runner="off")
    assert off.probe() is None and "turned off" in off.unavailable_reason
    # settings copied without validation still cannot turn the local runner on under auth
    unchecked = load_settings(data_dir=tmp_path).model_copy(
        update={"container_runner": "local", "auth": True}
    )
    refused = ContainerProcessor(unchecked)
    assert refused.probe() is None
    assert "CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED" in refused.unavailable_reason


def _worker(kinds: list[str], unavailable: dict[str, str] | None = None) -> WorkerInfo:
    caps: dict[str, Any] = {"unavailable": unavailable} if unavailable else {}
    return WorkerInfo(id=f"w{len(kinds)}", kinds=kinds, capabilities=caps)


def test_a_pending_task_says_why_the_live_workers_do_not_take_it() -> None:
    task = Task(kind="container", params={"image": "busybox"})
    why = "no container engine on this worker (no answer); the local runner is off unless"
    reason = why_waiting(task, [_worker(["transcode"], {"container": why})] * 2)
    assert reason is not None and reason.code == "unavailable" and reason.workers == 2
    assert reason.text() == f"no live worker runs container tasks: {why}"
    assert why_waiting(task, [_worker(["transcode"])]).text() == (  # type: ignore[union-attr]
        "no live worker runs container tasks"
    )
    assert why_waiting(task, [_worker(["container"])]) is None
    long = why_waiting(task, [_worker([], {"container": "x" * 1000})])
    assert long is not None and len(long.detail) <= 300
