"""Container tasks on a real Docker engine started by the fixtures (tests/dockerd.py).

Each test checks the engine itself, not our bookkeeping: which containers
carry the task's label after the task ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.errors import InvalidParams
from conveyor.models import TaskStatus
from conveyor.processors.container.docker_runner import LABEL
from tests import dockerd
from tests.conftest import FAST_ENV

from .conftest import GRACE_S, Harness


def containers_of(engine: dockerd.DockerEngine, task_id: str) -> list[str]:
    c = engine.client()
    try:
        return [
            x.name or ""
            for x in c.containers.list(
                all=True,
                filters={"label": f"{LABEL}.task={task_id}"},
                ignore_removed=True,  # one removed between the listing and its inspection
            )
        ]
    finally:
        c.close()


def test_logs_arrive_line_by_line_while_it_runs(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done; echo oops >&2"
    t = h.submit(image=docker_engine.image, command=["sh", "-c", script])
    first = h.wait_log(t.id, "line 1", timeout=30)
    print(f"\nFIGURE docker: first line stored {first:.2f} s after submit")
    # the first line is stored while the job still runs
    assert h.service.get(t.id).status == TaskStatus.PROCESSING
    assert "line 6" not in h.lines(t.id)
    done = h.wait(t.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    logs = h.service.logs(t.id, limit=1000)
    out = [ln.line for ln in logs if ln.stream == "stdout"]
    assert out == [f"line {i}" for i in range(1, 7)]
    assert [ln.line for ln in logs if ln.stream == "stderr"] == ["oops"]
    stamps = [ln.ts for ln in logs if ln.stream == "stdout"]
    assert (stamps[-1] - stamps[0]).total_seconds() > 1.5  # timestamped as printed
    assert containers_of(docker_engine, t.id) == []


def test_exit_3_is_retried_then_failed_with_its_exit_code(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    cmd = ["sh", "-c", 'echo "attempt $CONVEYOR_ATTEMPT"; exit 3']
    t = h.submit(image=docker_engine.image, command=cmd, max_attempts=2)
    done = h.wait(t.id)
    assert done.status == TaskStatus.FAILED
    assert done.attempts == 2
    assert done.error_code == "exit_3"
    assert "exit code 3" in (done.error or "")
    assert [a.error for a in done.history] == ["job failed: exit code 3"] * 2
    assert "attempt 1" in h.lines(t.id, attempt=1)
    assert "attempt 2" in h.lines(t.id, attempt=2)
    assert containers_of(docker_engine, t.id) == []


def test_exit_code_not_in_retry_on_fails_at_once(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    t = h.submit(
        image=docker_engine.image, command=["sh", "-c", "exit 4"], max_attempts=3, retry_on=[3]
    )
    done = h.wait(t.id)
    assert (done.status, done.attempts, done.error_code) == (TaskStatus.FAILED, 1, "exit_4")


def test_timeout_kills_the_job_and_removes_its_container(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    t = h.submit(
        image=docker_engine.image,
        command=["sh", "-c", "echo started; sleep 300"],
        timeout_s=1.5,
        max_attempts=1,
    )
    start = time.monotonic()
    done = h.wait(t.id)
    took = time.monotonic() - start
    print(f"\nFIGURE docker: timeout 1.5 s -> failed and container gone {took:.2f} s after submit")
    assert done.status == TaskStatus.FAILED
    assert done.error_code == "timeout"
    assert took < 1.5 + GRACE_S + 8
    assert "started" in h.lines(t.id)
    assert containers_of(docker_engine, t.id) == []


def test_cancel_removes_the_container_within_the_grace_period(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    # a job that ignores SIGTERM: only the SIGKILL after the grace period ends it
    script = "trap 'echo ignoring TERM' TERM; echo ready; while true; do sleep 0.1; done"
    t = h.submit(image=docker_engine.image, command=["sh", "-c", script])
    h.wait_log(t.id, "ready")
    assert len(containers_of(docker_engine, t.id)) == 1
    start = time.monotonic()
    h.service.cancel(t.id)
    while containers_of(docker_engine, t.id) and time.monotonic() - start < 30:
        time.sleep(0.1)
    gone_after = time.monotonic() - start
    print(f"\nFIGURE docker: TERM-ignoring job, container gone {gone_after:.2f} s after cancel")
    assert containers_of(docker_engine, t.id) == []
    # heartbeat (0.2 s) + SIGTERM + grace + removal
    assert gone_after < GRACE_S + 3, gone_after
    done = h.wait(t.id)
    assert done.status == TaskStatus.CANCELLED
    h.wait_log(t.id, "ignoring TERM")  # the job saw SIGTERM first: init passed it on


def test_cancel_of_a_cooperative_job_is_quick(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    t = h.submit(image=docker_engine.image, command=["sh", "-c", "echo ready; sleep 300"])
    h.wait_log(t.id, "ready")
    start = time.monotonic()
    h.service.cancel(t.id)
    h.wait(t.id)
    quick = time.monotonic() - start
    print(f"\nFIGURE docker: cooperative job cancelled in {quick:.2f} s")
    assert quick < GRACE_S  # sleep dies on SIGTERM: no wait for SIGKILL
    assert containers_of(docker_engine, t.id) == []


def test_killed_worker_leaves_an_orphan_that_the_next_worker_reaps(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine, tmp_path: Path
) -> None:
    """SIGKILL the worker process mid-job: its container survives it; the next worker
    removes it at start, and the task, redelivered once its lease ran out, completes."""
    h = docker_harness
    cmd = [
        "sh",
        "-c",
        'echo "attempt $CONVEYOR_ATTEMPT"; [ "$CONVEYOR_ATTEMPT" -gt 1 ] || sleep 300',
    ]
    t = h.submit(image=docker_engine.image, command=cmd)
    env = {
        **os.environ,
        **FAST_ENV,
        "CONVEYOR_DATA_DIR": str(h.settings.data_dir),
        "CONVEYOR_CONFIG": str(tmp_path / "none.yaml"),
        "CONVEYOR_BACKEND_URL": f"sqlite:///{h.settings.data_dir / 'c.db'}",
        "CONVEYOR_CONTAINER_RUNNER": "docker",
        "CONVEYOR_CONTAINER_NETWORK": "none",
        "DOCKER_HOST": docker_engine.host,
        "CONVEYOR_LEASE_SECONDS": "3",
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "--worker-id", "doomed"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        h.wait_log(t.id, "attempt 1", timeout=60)
        assert len(containers_of(docker_engine, t.id)) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)
    orphans = containers_of(docker_engine, t.id)
    assert len(orphans) == 1, "the SIGKILLed worker could not remove its container"
    reap_start = time.monotonic()
    h.worker(worker_id="successor")
    deadline = time.monotonic() + 10
    while containers_of(docker_engine, t.id) == orphans and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"\nFIGURE docker: orphan removed {time.monotonic() - reap_start:.2f} s after start")
    assert orphans[0] not in containers_of(docker_engine, t.id)  # reaped at worker start
    done = h.wait(t.id, timeout=60)
    print(
        f"\nFIGURE docker: redelivered task completed {time.monotonic() - reap_start:.2f} s later"
    )
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.attempts == 2
    assert done.history[0].outcome == "lease_expired"
    assert "attempt 2" in h.lines(t.id, attempt=2)
    assert containers_of(docker_engine, t.id) == []


def test_an_image_that_cannot_be_pulled_fails_with_a_clear_error(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    """No registry is reachable here: the pull fails (retryable, as a registry may come back)."""
    h = docker_harness
    h.worker()
    t = h.submit(image="conveyor-test/no-such-image:0", command=["true"], max_attempts=1)
    done = h.wait(t.id)
    assert (done.status, done.error_code) == (TaskStatus.FAILED, "runner_error")
    assert "conveyor-test/no-such-image:0" in (done.error or "")
    assert "Pulling image conveyor-test/no-such-image:0" in h.lines(t.id)


def test_a_command_missing_from_the_image_fails_without_retry(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    t = h.submit(image=docker_engine.image, command=["no-such-binary"], max_attempts=3)
    done = h.wait(t.id)
    # docker-init (PID 1) cannot exec it: exit 127, which retrying will not change
    assert (done.status, done.attempts, done.error_code) == (TaskStatus.FAILED, 1, "exit_127")
    assert any("no-such-binary" in line for line in h.lines(t.id))
    assert containers_of(docker_engine, t.id) == []


def test_an_oom_kill_is_recorded_on_the_attempt(
    docker_harness: Harness, docker_engine: dockerd.DockerEngine
) -> None:
    h = docker_harness
    h.worker()
    # tail keeps a line without end in memory: /dev/zero never ends one
    cmd = ["sh", "-c", "echo start; exec tail /dev/zero"]
    t = h.submit(image=docker_engine.image, command=cmd, memory="16m", max_attempts=1)
    done = h.wait(t.id)
    assert (done.status, done.error_code) == (TaskStatus.FAILED, "oom_killed")
    assert done.history[0].error == "job failed: out of memory (OOM killed)"
    assert any("(killed: out of memory)" in line for line in h.lines(t.id))
    assert containers_of(docker_engine, t.id) == []


def test_runner_choice_on_a_worker_with_an_engine(
    harness_factory: Callable[..., Harness], docker_engine: dockerd.DockerEngine
) -> None:
    """The worker's operator picks the runner, never the task: a worker with an engine
    fails at once, without retries, a task that only the local runner could run; an
    API whose operator said the workers run Docker refuses such a task at submit."""
    auto = harness_factory(container_runner="auto", docker_host=docker_engine.host)
    auto.worker()
    in_docker = auto.submit(image=docker_engine.image, command=["sh", "-c", "echo $HOSTNAME"])
    no_image = auto.submit(command=["sh", "-c", "echo ran"], max_attempts=3)
    asked_local = auto.submit(
        image=docker_engine.image, command=["sh", "-c", "echo ran"], runner="local", max_attempts=3
    )
    assert auto.wait(in_docker.id).status == TaskStatus.COMPLETED
    assert any("(docker runner)" in x for x in auto.lines(in_docker.id))
    done = auto.wait(no_image.id)
    assert (done.status, done.attempts, done.error_code) == (TaskStatus.FAILED, 1, "no_engine")
    assert "Docker only" in (done.error or "")
    done = auto.wait(asked_local.id)
    assert (done.status, done.attempts) == (TaskStatus.FAILED, 1)
    assert done.error_code == "runner_not_allowed", done.error
    for t in (no_image, asked_local):
        assert "ran" not in auto.lines(t.id)
    for w in auto.workers:
        w.stop(grace=0.5)
    strict = harness_factory(container_runner="docker", docker_host=docker_engine.host)
    for params in (
        {"command": ["sh", "-c", "echo ran"]},
        {"image": docker_engine.image, "command": ["true"], "runner": "local"},
    ):
        with pytest.raises(InvalidParams, match="the local runner is off on this deployment"):
            strict.submit(**params)
