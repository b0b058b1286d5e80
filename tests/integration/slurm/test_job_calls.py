"""What one Slurm job asks of the API (issue 20, show point 4: the executor's overhead).

The job (``python -m conveyor.worker.slurm.job``, as the batch script runs it, here
without Slurm: the executor's part is done by hand) runs one attempt of a short
container task against a real API with auth on (in-process uvicorn over SQLite) whose
every request is recorded.  A task done within the job's first heartbeat interval
costs four calls: reading the task, then the completion's fenced progress check, its
log lines and its record; no heartbeat, no progress report (superseded by the outcome),
no listing of earlier attempts' checkpoints (a first claim has none).  The log is whole
and in order once the task shows completed.  A longer task ships its lines while it
runs, after the quiet start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.models import ClaimedTask
from conveyor.worker.slurm.jobspec import SPEC_ENV, JobSpec, kind_to_load
from tests.apiserver import ApiServer, start_api
from tests.integration.slurm.conftest import LOCAL_RUNNER

W = "/api/worker/v1"


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[ApiServer, list[tuple[str, str, int]]]]:
    seen: list[tuple[str, str, int]] = []

    def configure(app: Any) -> None:
        @app.middleware("http")
        async def record(request: Any, call_next: Any) -> Any:
            resp = await call_next(request)
            seen.append((request.method, request.url.path, resp.status_code))
            return resp

    server = start_api(tmp_path / "api", auth=True, configure=configure)
    yield server, seen
    server.stop()


def _client(api: ApiServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _run_job(api: ApiServer, command: list[str], **env: str) -> tuple[str, subprocess.Popen[str]]:
    """Submit, claim and get a task credential as the executor does; start the job."""
    svc = api.service
    admin = _client(api, svc.auth.create_token("admin1", "admin").token)
    worker = _client(api, svc.auth.create_token("exec1", "worker", worker_id="exec1").token)
    r = admin.post("/api/queue/add", json={"kind": "container", "params": {"command": command}})
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    r = worker.post(
        f"{W}/claim",
        json={"worker_id": "exec1", "kinds": ["container"], "capacity": 1, "lease_s": 30},
    )
    claimed = ClaimedTask.model_validate(r.json()["claimed"][0])
    lease = claimed.lease.model_dump(mode="json")
    r = worker.post(f"{W}/task-credential", json={"lease": lease, "ttl_s": 3600})
    assert r.status_code == 200, r.text
    spec = JobSpec(api=api.url, credential=r.json()["credential"], lease=claimed.lease)
    job_env = {
        **os.environ,
        **LOCAL_RUNNER,
        "CONVEYOR_LOAD_KINDS": kind_to_load("container"),
        "CONVEYOR_LEASE_SECONDS": "30",
        "CONVEYOR_HEARTBEAT_INTERVAL": "2",
        **env,
        SPEC_ENV: spec.encode(),
    }
    job = subprocess.Popen(
        [sys.executable, "-m", "conveyor.worker.slurm.job"],
        env=job_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return task_id, job


def _task_and_log(api: ApiServer, task_id: str) -> tuple[Any, list[str]]:
    task = api.service.get(task_id)
    lines = [f"[{ln.stream}] {ln.line}" for ln in api.service.logs(task_id)]
    return task, lines


def test_a_short_attempt_costs_the_api_four_calls_and_its_log_is_whole(
    recorded: tuple[ApiServer, list[tuple[str, str, int]]],
) -> None:
    api, seen = recorded
    task_id, job = _run_job(api, ["sh", "-c", "echo hello from the node"])
    before = len(seen)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    calls = [(m, p.replace(task_id, "ID"), s) for m, p, s in seen[before:]]
    task, lines = _task_and_log(api, task_id)
    print(f"\n{calls}\n" + "\n".join(lines))
    assert task.status.value == "completed", (task, lines, out)
    assert calls == [
        ("GET", f"{W}/tasks/ID", 200),
        ("POST", f"{W}/progress", 204),  # the completion's fenced check
        ("POST", f"{W}/logs", 204),
        ("POST", f"{W}/complete", 200),
    ], out
    received = next(i for i, ln in enumerate(lines) if ln.startswith("[worker] Task received"))
    said = lines.index("[stdout] hello from the node")
    done = next(i for i, ln in enumerate(lines) if ln.startswith("[worker] Task completed"))
    assert received < said < done == len(lines) - 1, lines


def test_a_longer_attempt_ships_its_lines_while_it_runs(
    recorded: tuple[ApiServer, list[tuple[str, str, int]]],
) -> None:
    api, seen = recorded
    script = "echo tick 1; sleep 3; echo tick 2"
    task_id, job = _run_job(api, ["sh", "-c", script], CONVEYOR_HEARTBEAT_INTERVAL="0.5")
    deadline = time.monotonic() + 30
    while "[stdout] tick 1" not in _task_and_log(api, task_id)[1]:
        assert job.poll() is None and time.monotonic() < deadline, _task_and_log(api, task_id)
        time.sleep(0.1)
    assert api.service.get(task_id).status.value == "processing"  # seen before it ended
    out, _ = job.communicate(timeout=60)
    task, lines = _task_and_log(api, task_id)
    assert task.status.value == "completed", (task, lines, out)
    assert "[stdout] tick 2" in lines
    paths = [p for _m, p, _s in seen]
    assert f"{W}/heartbeat" in paths  # past its quiet start it heartbeats as any worker
