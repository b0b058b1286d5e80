"""The same lifecycle for the local-process runner (hosts without a container engine).

Real processes, checked through /proc: after a cancel or a timeout no
process of the job's process group may be left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.models import TaskStatus
from tests.conftest import FAST_ENV

from .conftest import GRACE_S, Harness


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (zombies excluded), read from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def pgid_from_log(h: Harness, task_id: str) -> int:
    for line in h.lines(task_id):
        m = re.match(r"^pgid (\d+)$", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no pgid line in {h.lines(task_id)}")


def test_logs_arrive_line_by_line_while_it_runs(local_harness: Harness) -> None:
    h = local_harness
    h.worker()
    script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done; echo oops >&2"
    t = h.submit(command=["sh", "-c", script])
    h.wait_log(t.id, "line 1", timeout=30)
    assert h.service.get(t.id).status == TaskStatus.PROCESSING
    assert "line 6" not in h.lines(t.id)
    done = h.wait(t.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    logs = h.service.logs(t.id, limit=1000)
    assert [ln.line for ln in logs if ln.stream == "stdout"] == [f"line {i}" for i in range(1, 7)]
    assert [ln.line for ln in logs if ln.stream == "stderr"] == ["oops"]


def test_exit_3_is_retried_then_failed_with_its_exit_code(local_harness: Harness) -> None:
    h = local_harness
    h.worker()
    t = h.submit(command=["sh", "-c", 'echo "attempt $CONVEYOR_ATTEMPT"; exit 3'], max_attempts=2)
    done = h.wait(t.id)
    assert (done.status, done.attempts, done.error_code) == (TaskStatus.FAILED, 2, "exit_3")
    assert "attempt 1" in h.lines(t.id, attempt=1)
    assert "attempt 2" in h.lines(t.id, attempt=2)


def test_timeout_kills_the_whole_group(local_harness: Harness) -> None:
    h = local_harness
    h.worker()
    script = "echo pgid $$; sleep 300 & sleep 300 & wait"
    t = h.submit(command=["sh", "-c", script], timeout_s=1.5, max_attempts=1)
    h.wait_log(t.id, "pgid ")
    pgid = pgid_from_log(h, t.id)
    assert len(group_members(pgid)) == 3
    done = h.wait(t.id)
    assert (done.status, done.error_code) == (TaskStatus.FAILED, "timeout")
    assert group_members(pgid) == []


def test_cancel_leaves_no_process_of_its_group(local_harness: Harness) -> None:
    """A job that spawns children and ignores SIGTERM: SIGKILL after the grace ends them all."""
    h = local_harness
    h.worker()
    script = (
        "trap 'echo ignoring TERM' TERM; echo pgid $$; "
        "sh -c 'trap \"\" TERM; sleep 300' & sleep 300 & "
        "while true; do sleep 0.1; done"
    )
    t = h.submit(command=["sh", "-c", script])
    h.wait_log(t.id, "pgid ")
    pgid = pgid_from_log(h, t.id)
    assert len(group_members(pgid)) >= 3
    start = time.monotonic()
    h.service.cancel(t.id)
    done = h.wait(t.id)
    took = time.monotonic() - start
    print(f"\nFIGURE local: TERM-ignoring job and children cancelled in {took:.2f} s")
    assert done.status == TaskStatus.CANCELLED
    assert took < GRACE_S + 3
    assert group_members(pgid) == []
    assert "ignoring TERM" in h.lines(t.id)


def test_the_job_gets_its_own_environment_not_the_workers(
    local_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = local_harness
    monkeypatch.setenv("CONVEYOR_SECRET_API_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-credential")
    h.worker()
    t = h.submit(
        command=["sh", "-c", 'echo "token=$API_TOKEN"; echo "aws=$AWS_SECRET_ACCESS_KEY."; env'],
        env={"GREETING": "hello"},
        secrets=["API_TOKEN"],
    )
    done = h.wait(t.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    lines = h.lines(t.id)
    assert "token=********" in lines  # the job had it; the log never shows it
    assert "aws=." in lines  # the worker's own credentials are not passed on
    assert "GREETING=hello" in lines
    assert not any("s3cr3t-value" in ln for ln in lines)
    assert "s3cr3t-value" not in done.model_dump_json()


def test_a_missing_secret_fails_without_running(local_harness: Harness) -> None:
    h = local_harness
    h.worker()
    t = h.submit(command=["sh", "-c", "echo ran"], secrets=["NOT_SET_ANYWHERE"])
    done = h.wait(t.id)
    assert (done.status, done.attempts, done.error_code) == (TaskStatus.FAILED, 1, "missing_secret")
    assert "ran" not in h.lines(t.id)


def test_inputs_in_outputs_out_and_restored_on_retry(
    local_harness: Harness, tmp_path: Path
) -> None:
    h = local_harness
    src = tmp_path / "data.txt"
    src.write_text("42\n")
    h.service.storage.put_file("input", "sets/data.txt", src)
    h.worker()
    script = (
        'cat "$CONVEYOR_INPUT_DIR/data.txt"; '
        'if [ -f "$CONVEYOR_OUTPUT_DIR/ckpt" ]; then '
        'echo "resumed from $(cat $CONVEYOR_OUTPUT_DIR/ckpt)"; '
        'echo done > "$CONVEYOR_OUTPUT_DIR/result.txt"; exit 0; fi; '
        'echo step-1 > "$CONVEYOR_OUTPUT_DIR/ckpt"; exit 3'
    )
    t = h.submit(
        command=["sh", "-c", script],
        inputs=[{"bucket": "input", "key": "sets/data.txt", "path": "data.txt"}],
        max_attempts=2,
    )
    done = h.wait(t.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert "resumed from step-1" in h.lines(t.id, attempt=2)
    assert "42" in h.lines(t.id, attempt=1)
    assert sorted(o.key for o in done.outputs) == [f"{t.id}/ckpt", f"{t.id}/result.txt"]


def task_processes(task_id: str) -> list[int]:
    """Live processes started for ``task_id`` (their environment names it)."""
    needle = f"CONVEYOR_TASK_ID={task_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != "Z":
            found.append(int(entry.name))
    return found


def test_killed_worker_leaves_orphans_that_the_next_worker_kills(
    local_harness: Harness, tmp_path: Path
) -> None:
    """SIGKILL the worker mid-job: PDEATHSIG ends the job's first process only; its
    children (one even in a session of its own) are killed by the next worker at
    start, and the task, redelivered once its lease ran out, completes."""
    h = local_harness
    script = (
        'echo "attempt $CONVEYOR_ATTEMPT"; '
        'if [ -f "$CONVEYOR_OUTPUT_DIR/ckpt" ]; then '
        'echo "resumed at $(cat $CONVEYOR_OUTPUT_DIR/ckpt)"; '
        "exit 0; fi; echo step-9 > $CONVEYOR_OUTPUT_DIR/ckpt; "
        "sleep 300 & setsid sleep 301 & wait"
    )
    t = h.submit(command=["sh", "-c", script])
    env = {
        **os.environ,
        **FAST_ENV,
        "CONVEYOR_DATA_DIR": str(h.settings.data_dir),
        "CONVEYOR_CONFIG": str(tmp_path / "none.yaml"),
        "CONVEYOR_BACKEND_URL": f"sqlite:///{h.settings.data_dir / 'c.db'}",
        "CONVEYOR_CONTAINER_RUNNER": "local",
        "CONVEYOR_LEASE_SECONDS": "3",
        "CONVEYOR_CONTAINER_SYNC_INTERVAL": "0.3",
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
        deadline = time.monotonic() + 10
        while len(task_processes(t.id)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(task_processes(t.id)) == 3  # sh and two sleeps
        # the checkpoint reaches the attempt's staging while the job runs
        while not [
            o
            for o in h.service.storage.list("output", f".conveyor-staging/{t.id}/")
            if o.key.endswith(f"/{t.id}/ckpt")
        ]:
            assert time.monotonic() < deadline + 10, "checkpoint never synced"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    left = task_processes(t.id)
    assert len(left) == 2, "the shell died with its worker; its children did not"
    h.worker(worker_id="successor")
    deadline = time.monotonic() + 10
    while task_processes(t.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task_processes(t.id) == []
    done = h.wait(t.id, timeout=60)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.attempts == 2 and done.history[0].outcome == "lease_expired"
    assert "attempt 2" in h.lines(t.id, attempt=2)
    assert "resumed at step-9" in h.lines(t.id, attempt=2)


def test_a_local_job_runs_as_the_operators_user_and_cannot_read_the_worker(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """CONVEYOR_CONTAINER_LOCAL_USER: the job runs as another uid (the worker is root
    here), so the worker's /proc/<pid>/environ is closed to it; its inputs come in and
    its outputs go out as usual, and links it leaves in its folder are not followed."""
    if os.geteuid() != 0:
        pytest.skip("starting a job as another user needs a worker running as root")
    h = harness_factory(container_runner="local", container_local_user="65534:65534")
    src = tmp_path / "data.txt"
    src.write_text("42\n")
    h.service.storage.put_file("input", "sets/data.txt", src)
    h.worker()
    script = (
        'echo "uid=$(id -u)"; cat "$CONVEYOR_INPUT_DIR/data.txt"; '
        'if cat "/proc/$WORKER/environ" > /dev/null 2>&1; then echo "read the worker"; fi; '
        'echo done > "$CONVEYOR_OUTPUT_DIR/result.txt"; '
        'ln -s /etc/passwd "$CONVEYOR_OUTPUT_DIR/passwd"'
    )
    t = h.submit(
        command=["sh", "-c", script],
        env={"WORKER": str(os.getpid())},
        inputs=[{"bucket": "input", "key": "sets/data.txt", "path": "data.txt"}],
    )
    done = h.wait(t.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    lines = h.lines(t.id)
    assert "uid=65534" in lines and "42" in lines
    assert "read the worker" not in lines
    assert [o.name for o in done.outputs] == ["result.txt"]
