"""The one small adapter that talks to Slurm, every way it can, against the real cluster:
the commands (``squeue --json``, and ``squeue --format`` as on a Slurm without
``--json``) and slurmrestd (its UNIX socket, ``rest_auth/local``).  Each submits, finds
its job in the queue, reads it back, cancels it, reads an exit code, gets a refusal,
and reads the cluster; the executor then runs a task through slurmrestd.

slurmrestd's JWT path is not run: Debian 12's Slurm ships ``rest_auth_jwt.so`` but no
``auth/jwt`` plugin for slurmctld (it is built without libjwt), so slurmctld cannot
verify a token (docs/slurm.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.worker.slurm.adapter import JobRequest, SlurmAdapter, SlurmError, open_adapter
from tests.integration.slurm.conftest import Site
from tests.slurm_cluster import SlurmCluster


@pytest.fixture(params=["cli-json", "cli-text", "rest"])
def adapter(
    request: pytest.FixtureRequest, slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SlurmAdapter]:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    if request.param == "rest":
        a = open_adapter(slurm.rest_url)
    else:
        a = open_adapter("cli", squeue_format=request.param.split("-")[1])
    yield a
    a.close()


def _until(adapter: SlurmAdapter, job_id: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        job = adapter.job(job_id)
        if job is not None and job.state in states:
            return job.state
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_submit_find_read_cancel_exit_codes_refusals(adapter: SlurmAdapter, tmp_path: Path) -> None:
    name = f"cvy-adapter{adapter.kind}{int(time.time() * 1000) % 100000}"
    out = tmp_path / "job.out"
    req = JobRequest(
        name=name,
        comment=f"conveyor:task={'a' * 26},attempt=1,worker=adapter-test",
        script="#!/bin/sh\necho FOO=$FOO; sleep 60\n",
        partition="debug",
        cpus_per_task=1,
        mem_mb=64,
        time_limit_min=5,
        output=str(out),
        workdir=str(tmp_path),
        environment={"PATH": "/usr/bin:/bin", "FOO": "bar"},
    )
    job_id = adapter.submit(req)
    assert _until(adapter, job_id, {"RUNNING"}) == "RUNNING"
    listed = {j.job_id: j for j in adapter.jobs()}[job_id]
    assert (listed.name, listed.comment, listed.partition) == (name, req.comment, "debug")
    assert listed.state == "RUNNING" and listed.nodes == "node1" and listed.time_limit_min == 5
    # RUNNING is said once the job is launched, maybe before its script printed a line:
    # cancel only after it did (a CI run cancelled it first and the output held no line)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and "FOO=" in out.read_text()):
        time.sleep(0.2)
    adapter.cancel(job_id)
    assert _until(adapter, job_id, {"CANCELLED"}) == "CANCELLED"
    adapter.cancel(job_id)  # already over: no error
    assert "FOO=bar" in out.read_text()  # the environment it was given, and no other

    failing = JobRequest(
        name=f"{name}-x", comment="", script="#!/bin/sh\nexit 3\n", workdir=str(tmp_path)
    )
    fid = adapter.submit(failing)
    _until(adapter, fid, {"FAILED"})
    ended = adapter.job(fid)
    assert ended is not None and ended.exit_code == 3 and ended.terminal
    if adapter.kind == "rest" or getattr(adapter, "squeue_format", "") == "json":
        assert {j.job_id: j for j in adapter.jobs()}[fid].exit_code == 3

    with pytest.raises(SlurmError) as refused:
        adapter.submit(
            JobRequest(name=f"{name}-big", comment="", script="#!/bin/sh\n", mem_mb=10**7)
        )
    print(f"\n{adapter.kind}: refused: {refused.value.message}")
    assert "not available" in refused.value.message
    assert adapter.job("99999999") is None


def test_the_cluster_as_slurm_sees_it(adapter: SlurmAdapter) -> None:
    view = adapter.cluster()
    parts = {p.name: p for p in view.partitions}
    assert parts["debug"].default and parts["debug"].nodes == ["node1"]
    assert parts["gpu"].nodes == ["gpunode"] and not parts["gpu"].default
    nodes = {n.name: n for n in view.nodes}
    assert nodes["node1"].available and nodes["node1"].cpus >= 4 and nodes["node1"].gpus == 0
    assert nodes["gpunode"].gpus == 2 and nodes["gpunode"].gpus_free == 0
    assert "DOWN" in nodes["gpunode"].state.upper() and not nodes["gpunode"].available
    assert [n.name for n in view.partition_nodes("gpu")] == ["gpunode"]


def test_the_executor_runs_a_task_through_slurmrestd(site: Site) -> None:
    _, log = site.executor("rest-exec", "--slurm", site.slurm.rest_url)
    task_id = site.container(["sh", "-c", "echo through slurmrestd"])
    t = site.wait(task_id, timeout=90)
    assert t["status"] == "completed", site.executor_logs()
    assert "[stdout] through slurmrestd" in [
        f"[{x['stream']}] {x['line']}" for x in site.logs(task_id)
    ]
    assert "(rest)" in log.read_text()
    cancel_me = site.container(["sleep", "600"])
    job = site.job_of(cancel_me)
    with site.admin as c:
        assert c.post(f"/api/tasks/{cancel_me}/cancel").status_code == 200
    assert site.wait(cancel_me, timeout=30)["status"] == "cancelled"
    assert not [j for j in site.jobs() if j["id"] == job["id"]]
