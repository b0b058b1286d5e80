"""The Slurm executor's pure parts: what it submits, how it reads Slurm, what states mean.

The test cluster (tests/slurm_cluster.py) has no GPUs, so ``--gres=gpu:N`` is checked
here, for both adapters; the rest runs against real Slurm in tests/integration/slurm.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from conveyor.models import Lease, Task
from conveyor.processors import LOAD_KINDS_ENV
from conveyor.worker.slurm import jobspec, states
from conveyor.worker.slurm.adapter import JobRequest, expand_hostlist, gpu_count, minutes
from conveyor.worker.slurm.cli import (
    job_from_json,
    job_from_scontrol,
    job_from_text,
    node_from_scontrol,
    parse_kv,
    partition_from_scontrol,
    sbatch_args,
)
from conveyor.worker.slurm.rest import rest_job

TASK_ID = "01m98esry75cgcxpyvvbpfjpkq"


def _task(**kw: object) -> Task:
    base: dict[str, object] = {"id": TASK_ID, "kind": "container", "params": {}}
    base.update(kw)
    return Task.model_validate(base)


def _lease(attempt: int = 2) -> Lease:
    return Lease(
        task_id=TASK_ID,
        token="secret-token",
        worker_id="slurm-login1",
        attempt=attempt,
        expires_at=datetime.now(UTC),
    )


def _request(task: Task, cfg: jobspec.SlurmConfig | None = None, **env: str) -> JobRequest:
    cfg = cfg or jobspec.SlurmConfig(partition="gpu", account="proj1", qos="high")
    spec = jobspec.JobSpec(
        api="https://api", credential="cvt1.x.y", lease=_lease(), time_limit_min=90
    )
    return jobspec.build_request(
        task,
        _lease(),
        cfg,
        worker_id="slurm-login1",
        spec=spec,
        settings_env={"CONVEYOR_OUTPUT_BUCKET": "output"},
        environ=env or {"PATH": "/usr/bin"},
        secrets=["WANDB"],
    )


def test_gpus_cpus_memory_and_time_come_from_the_task() -> None:
    task = _task(gpus=2, params={"cpus": 3.5, "memory": 3 * 1024**3 + 1, "timeout_s": 5400})
    req = _request(task)
    args = sbatch_args(req)
    assert "--gres=gpu:2" in args
    assert "--cpus-per-task=4" in args  # rounded up
    assert "--mem=3073M" in args  # bytes rounded up to MiB
    assert "--time=90" in args
    assert {"--partition=gpu", "--account=proj1", "--qos=high", "--no-requeue"} <= set(args)
    assert f"--job-name=cvy-{TASK_ID}-2" in args
    assert f"--comment=conveyor:task={TASK_ID},attempt=2,worker=slurm-login1" in args
    assert f"--output=/tmp/conveyor-{TASK_ID}-2.out" in args
    body = rest_job(req)
    assert body["tres_per_node"] == "gres:gpu:2"
    assert body["cpus_per_task"] == 4 and body["memory_per_node"] == 3073
    assert body["time_limit"] == 90 and body["requeue"] is False
    assert body["partition"] == "gpu" and body["account"] == "proj1" and body["qos"] == "high"
    assert body["name"] == f"cvy-{TASK_ID}-2"
    assert body["standard_output"] == body["standard_error"] == f"/tmp/conveyor-{TASK_ID}-2.out"


def test_no_gpus_no_gres_and_defaults_apply() -> None:
    cfg = jobspec.SlurmConfig(partition=None, default_cpus=2, default_mem_mb=1500)
    req = _request(_task(params={}), cfg)
    args = sbatch_args(req)
    assert not any(a.startswith("--gres") for a in args)
    assert "tres_per_node" not in rest_job(req)
    assert "--cpus-per-task=2" in args and "--mem=1500M" in args
    assert not any(a.startswith(("--partition", "--account", "--qos")) for a in args)
    assert jobspec.time_limit_min(_task(params={}), 6 * 3600) == 360
    assert jobspec.time_limit_min(_task(params={"timeout_s": 30}), 6 * 3600) == 1
    cfg = jobspec.SlurmConfig()
    for written, mib in (("512m", 512), ("4g", 4096), ("1.5GiB", 1536), (10**6, 1)):
        assert jobspec.mem_mb_of(_task(params={"memory": written}), cfg) == mib, written
    assert jobspec.mem_mb_of(_task(params={"memory": "lots"}), cfg) is None


def test_the_job_gets_no_executor_credential_only_its_own() -> None:
    env = _request(
        _task(params={"secrets": ["WANDB"]}),
        PATH="/usr/bin",
        HOME="/home/u",
        CONVEYOR_WORKER_CREDENTIAL="cvy_abc_secret",
        CONVEYOR_TOKEN="cvy_admin",
        CONVEYOR_BACKEND_URL="postgresql://user:pw@db/x",
        CONVEYOR_STORAGE_URL="s3://?profile=x",
        CONVEYOR_SECRET_WANDB="w",
        CONVEYOR_SECRET_OTHER="o",
        CONVEYOR_CONTAINER_RUNNER="local",
        AWS_SECRET_ACCESS_KEY="aws",
    ).environment
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"
    assert env["CONVEYOR_CONTAINER_RUNNER"] == "local"  # the operator's settings travel
    assert env["CONVEYOR_SECRET_WANDB"] == "w"  # asked for by the task (granted at submit)
    for gone in (
        "CONVEYOR_WORKER_CREDENTIAL",
        "CONVEYOR_TOKEN",
        "CONVEYOR_BACKEND_URL",
        "CONVEYOR_STORAGE_URL",
        "CONVEYOR_SECRET_OTHER",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert gone not in env
    spec = jobspec.JobSpec.decode(env[jobspec.SPEC_ENV])
    assert spec.credential == "cvt1.x.y" and spec.lease.token == "secret-token"
    assert "secret-token" not in repr(spec) and "cvt1" not in repr(spec)


def test_the_job_loads_its_tasks_kind_only() -> None:
    """A job imports one kind (CONVEYOR_LOAD_KINDS), not every kind's libraries: a
    container task's job does not import docparse's numpy (a third of a job's start);
    named with its class, the kind is imported without reading any package's entry
    points (~50 ms of a job's CPU); a bare kind name or a path that does not import is
    looked up by entry point."""
    env = _request(_task(kind="container")).environment
    assert env[LOAD_KINDS_ENV] == "container=conveyor.processors.container:ContainerProcessor"
    code = (
        "import sys, importlib.metadata as md\n"
        "scans = []\n"
        "real = md.entry_points\n"
        "md.entry_points = lambda **kw: scans.append(kw.get('group')) or real(**kw)\n"
        "from conveyor.config import load_settings\n"
        "from conveyor.processors import installed\n"
        "load_settings()\n"
        "kinds = installed()\n"
        "print(sorted(kinds), kinds['container'].kind, 'numpy' in sys.modules,"
        " 'conveyor.processors' in scans)\n"
    )

    def run(load: str) -> list[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, LOAD_KINDS_ENV: load},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()

    assert run(env[LOAD_KINDS_ENV]) == ["['container']", "container", "False", "False"]
    assert run("container") == ["['container']", "container", "False", "True"]
    assert run("container=no.such.module:Nothing") == [
        "['container']",
        "container",
        "False",
        "True",
    ]


def test_comments_name_task_attempt_and_executor() -> None:
    text = jobspec.comment(TASK_ID, 3, "slurm-a@b")
    assert jobspec.parse_comment(text) == (TASK_ID, 3, "slurm-a@b")
    assert jobspec.parse_comment("someone else's job") is None
    assert jobspec.parse_comment("") is None
    with pytest.raises(ValueError):
        jobspec.check_worker_id("has space")
    with pytest.raises(ValueError):
        jobspec.check_worker_id("a,b")


def test_job_script_runs_the_job_module() -> None:
    cfg = jobspec.SlurmConfig(python="/opt/conveyor env/bin/python")
    text = jobspec.script(cfg, _task(), 1)
    assert text.startswith("#!/bin/sh\n")
    assert "exec '/opt/conveyor env/bin/python' -m conveyor.worker.slurm.job" in text


@pytest.mark.parametrize(
    ("state", "code", "retryable"),
    [
        ("TIMEOUT", "slurm_timeout", False),
        ("OUT_OF_MEMORY", "slurm_out_of_memory", False),
        ("NODE_FAIL", "slurm_node_fail", True),
        ("PREEMPTED", "slurm_preempted", True),
        ("BOOT_FAIL", "slurm_node_fail", True),
        ("FAILED", "slurm_failed", True),
        ("CANCELLED", "slurm_cancelled", False),
        ("CANCELLED by 0", "slurm_cancelled", False),
        ("COMPLETED", "slurm_no_report", True),
        ("DEADLINE", "slurm_deadline", False),
        ("GONE", "slurm_lost", True),
    ],
)
def test_each_end_state_maps_onto_the_attempt(state: str, code: str, retryable: bool) -> None:
    out = states.outcome("42", state, reason="TimeLimit", exit_code=1, time_limit_min=5)
    assert (out.code, out.retryable, out.cancelled) == (code, retryable, False)
    head = "Slurm job 42" if state == "GONE" else f"Slurm job 42 {states.normal_state(state)}"
    assert out.message.startswith(head)
    assert ("not retried" in out.message) is not retryable


def test_cancel_requested_by_conveyor_is_a_cancel_and_messages_say_why() -> None:
    out = states.outcome("7", "CANCELLED", cancel_requested=True)
    assert out.cancelled and out.code == "cancelled" and not out.retryable
    assert "from Slurm's side" in states.outcome("7", "CANCELLED").message
    assert "its time limit: 5 min" in states.outcome("7", "TIMEOUT", time_limit_min=5).message
    assert "exit code 3" in states.outcome("7", "FAILED", exit_code=3).message
    assert "signal 9" in states.outcome("7", "FAILED", signal=9).message
    assert states.is_active("PENDING") and states.is_active("RUNNING+COMPLETING")
    assert states.is_terminal("COMPLETED") and not states.is_terminal("PENDING")
    assert states.decode_wait_status(768) == (3, None)
    assert states.decode_wait_status(9) == (None, 9)


def test_squeue_json_text_and_scontrol_read_alike() -> None:
    j = job_from_json(
        {
            "job_id": 8,
            "name": f"cvy-{TASK_ID}-1",
            "job_state": "FAILED",
            "state_reason": "NonZeroExitCode",
            "comment": jobspec.comment(TASK_ID, 1, "w"),
            "user_name": "root",
            "partition": "debug",
            "nodes": "node1",
            "exit_code": 768,
            "time_limit": 1,
            "submit_time": 1796653405,
            "cpus": 1,
            "tres_per_node": "",
        }
    )
    assert (j.job_id, j.state, j.exit_code, j.signal, j.time_limit_min) == (
        "8",
        "FAILED",
        3,
        None,
        1,
    )
    assert j.terminal and not j.active
    line = (
        f"9|cvy-{TASK_ID}-1|PENDING|PartitionConfig|root|debug||1:00|2026-12-07T14:23:25|64|"
        f"gres/gpu:1|conveyor:task={TASK_ID},attempt=1,worker=w"
    )
    t = job_from_text(line)
    assert t is not None
    assert (t.state, t.reason, t.time_limit_min, t.cpus) == ("PENDING", "PartitionConfig", 1, 64)
    assert jobspec.parse_comment(t.comment) == (TASK_ID, 1, "w")
    s = job_from_scontrol(
        "JobId=6 JobName=wrap UserId=root(0) JobState=TIMEOUT Reason=TimeLimit "
        "ExitCode=1:0 TimeLimit=00:01:00 NodeList=node1 Comment=conveyor:task=x,attempt=1 "
        "Partition=debug NumCPUs=1 SubmitTime=2026-12-07T14:23:25"
    )
    assert (s.job_id, s.state, s.reason, s.exit_code, s.time_limit_min) == (
        "6",
        "TIMEOUT",
        "TimeLimit",
        1,
        1,
    )
    assert s.user == "root" and s.nodes == "node1"
    assert parse_kv("A=1 B=two words C=3") == {"A": "1", "B": "two words", "C": "3"}


def test_nodes_partitions_hostlists_gpus_and_times() -> None:
    n = node_from_scontrol(
        "NodeName=g1 CPUAlloc=4 CPUTot=8 Gres=gpu:a100:4(S:0-1) GresUsed=gpu:a100:1(IDX:0) "
        "RealMemory=16000 AllocMem=100 State=MIXED Partitions=gpu,all Reason=(null)"
    )
    assert (n.gpus, n.gpus_used, n.gpus_free, n.cpus, n.cpus_alloc) == (4, 1, 3, 8, 4)
    assert n.partitions == ["gpu", "all"] and n.available
    down = node_from_scontrol("NodeName=g2 Gres=gpu:2 State=DOWN Reason=never_started")
    assert down.gpus == 2 and down.gpus_free == 0 and not down.available
    p = partition_from_scontrol(
        "PartitionName=gpu Default=YES MaxTime=1-00:00:00 Nodes=g[1-3,7],x State=UP TotalCPUs=32"
    )
    assert p.nodes == ["g1", "g2", "g3", "g7", "x"] and p.default and p.total_cpus == 32
    assert expand_hostlist("c[08-10]") == ["c08", "c09", "c10"]
    assert gpu_count("gpu:2,gpu:v100:1") == 3 and gpu_count("(null)") == 0
    assert minutes("UNLIMITED") is None and minutes("1-00:00:00") == 1440
    assert minutes("0:30") == 1 and minutes("90") == 90 and minutes("01:00:00") == 60


def test_docs_states_table_is_the_executors() -> None:
    """docs/slurm.md's states table says what ``states.RULES`` does, row for row."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "slurm.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`slurm_"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2], cells[3])
    want = {
        state: (rule.code, "yes" if rule.retryable else "no", rule.meaning)
        for state, rule in states.RULES.items()
    }
    want["(gone)"] = (
        states.UNKNOWN.code,
        "yes" if states.UNKNOWN.retryable else "no",
        states.UNKNOWN.meaning,
    )
    assert rows == want
