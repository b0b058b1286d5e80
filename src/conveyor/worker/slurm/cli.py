"""Slurm through its commands on a login node (``--slurm cli``, the default).

``sbatch --parsable`` (the script on stdin, the job's environment exactly the one the
executor built: ``--export=ALL`` of a process environment that holds nothing else),
``squeue --format`` (one short line a job; ``CONVEYOR_SLURM_SQUEUE=json`` reads
``squeue --json`` instead, Slurm ≥ 21.08, which also gives exit codes but costs far
more to make and read: every field of every job, and Slurm 22.05 ignores its filters),
``scontrol show job -o`` (one job, exit code included), ``scancel``, and
``scontrol -o show node|partition`` for the cluster page.  Every call is an argument
list (no shell) with a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from datetime import datetime
from typing import Any

from .adapter import (
    ClusterView,
    JobRequest,
    SlurmAdapter,
    SlurmError,
    SlurmJob,
    SlurmNode,
    SlurmPartition,
    expand_hostlist,
    gpu_count,
    minutes,
)
from .states import decode_wait_status, normal_state

log = logging.getLogger("conveyor.slurm")

TIMEOUT_S = 60.0
_KV = re.compile(r"(\S+?)=(.*?)(?= \S+?=|\s*$)")
# squeue --format fields, '|'-separated; the comment last (it may hold anything)
TEXT_FORMAT = "%i|%j|%T|%r|%u|%P|%N|%l|%V|%C|%b|%k"
# the environment sbatch itself needs to find the cluster, kept beside the job's own
_SLURM_CLIENT_ENV = ("SLURM_CONF", "SLURM_CLUSTERS")


def sbatch_args(req: JobRequest) -> list[str]:
    """The options of ``sbatch --parsable`` for ``req`` (the script goes on stdin)."""
    args = [
        f"--job-name={req.name}",
        f"--comment={req.comment}",
        "--no-requeue",  # Conveyor retries, not Slurm: a requeued job would run twice
        "--export=ALL",  # of sbatch's own environment, which the adapter builds
        f"--chdir={req.workdir}",
        "--ntasks=1",
        f"--cpus-per-task={max(1, req.cpus_per_task)}",
    ]
    for flag, value in (
        ("partition", req.partition),
        ("account", req.account),
        ("qos", req.qos),
    ):
        if value:
            args.append(f"--{flag}={value}")
    if req.mem_mb:
        args.append(f"--mem={req.mem_mb}M")
    if req.time_limit_min:
        args.append(f"--time={req.time_limit_min}")
    if req.gpus > 0:
        args.append(f"--gres=gpu:{req.gpus}")
    if req.output:
        args += [f"--output={req.output}", f"--error={req.output}"]
    return [*args, *req.extra_args]


def parse_kv(line: str) -> dict[str, str]:
    """``scontrol -o`` output: ``Key=value Key2=value with spaces …``."""
    return {m.group(1): m.group(2).strip() for m in _KV.finditer(line.strip())}


def _exit(pair: str) -> tuple[int | None, int | None]:
    code, _, sig = (pair or "").partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None, None
    return (None, s) if s else (c, None)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _epoch(text: str) -> int | None:
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def job_from_json(j: dict[str, Any]) -> SlurmJob:
    exit_code, sig = decode_wait_status(_int(j.get("exit_code")))
    return SlurmJob(
        job_id=str(j.get("job_id")),
        name=str(j.get("name") or ""),
        state=normal_state(str(j.get("job_state") or "")),
        reason=str(j.get("state_reason") or ""),
        comment=str(j.get("comment") or ""),
        user=str(j.get("user_name") or ""),
        partition=str(j.get("partition") or ""),
        nodes=str(j.get("nodes") or ""),
        exit_code=exit_code,
        signal=sig,
        time_limit_min=_int(j.get("time_limit")),
        submit_time=_int(j.get("submit_time")),
        cpus=_int(j.get("cpus")),
        gres=str(j.get("tres_per_node") or ""),
    )


def job_from_text(line: str) -> SlurmJob | None:
    parts = line.rstrip("\n").split("|", 11)
    if len(parts) < 12:
        return None
    jid, name, state, reason, user, part, nodes, limit, submit, cpus, gres, comment = parts
    return SlurmJob(
        job_id=jid.strip(),
        name=name,
        state=normal_state(state),
        reason=reason,
        comment="" if comment == "(null)" else comment,
        user=user,
        partition=part,
        nodes=nodes,
        time_limit_min=minutes(limit),
        submit_time=_epoch(submit),
        cpus=_int(cpus),
        gres="" if gres in ("N/A", "(null)") else gres,
    )


def job_from_scontrol(line: str) -> SlurmJob:
    kv = parse_kv(line)
    exit_code, sig = _exit(kv.get("ExitCode", ""))
    comment = kv.get("Comment", "")
    return SlurmJob(
        job_id=kv.get("JobId", ""),
        name=kv.get("JobName", ""),
        state=normal_state(kv.get("JobState", "")),
        reason=kv.get("Reason", ""),
        comment="" if comment == "(null)" else comment,
        user=kv.get("UserId", "").split("(")[0],
        partition=kv.get("Partition", ""),
        nodes="" if kv.get("NodeList") in (None, "(null)") else kv.get("NodeList", ""),
        exit_code=exit_code,
        signal=sig,
        time_limit_min=minutes(kv.get("TimeLimit")),
        submit_time=_epoch(kv.get("SubmitTime", "")),
        cpus=_int(kv.get("NumCPUs")),
        gres=kv.get("TresPerNode", ""),
    )


def node_from_scontrol(line: str) -> SlurmNode:
    kv = parse_kv(line)
    return SlurmNode(
        name=kv.get("NodeName", ""),
        state=kv.get("State", ""),
        partitions=[p for p in kv.get("Partitions", "").split(",") if p],
        cpus=_int(kv.get("CPUTot")) or 0,
        cpus_alloc=_int(kv.get("CPUAlloc")) or 0,
        memory_mb=_int(kv.get("RealMemory")) or 0,
        memory_alloc_mb=_int(kv.get("AllocMem")) or 0,
        gpus=gpu_count(kv.get("Gres")),
        gpus_used=gpu_count(kv.get("GresUsed")),
        reason="" if kv.get("Reason") in (None, "(null)") else kv.get("Reason", ""),
    )


def partition_from_scontrol(line: str) -> SlurmPartition:
    kv = parse_kv(line)
    return SlurmPartition(
        name=kv.get("PartitionName", ""),
        state=kv.get("State", ""),
        nodes=expand_hostlist(kv.get("Nodes", "")),
        total_cpus=_int(kv.get("TotalCPUs")) or 0,
        max_time=kv.get("MaxTime", ""),
        default=kv.get("Default", "").upper() == "YES",
    )


class CliAdapter(SlurmAdapter):
    kind = "cli"

    def __init__(self, squeue_format: str | None = None) -> None:
        # text (squeue --format) | json (squeue --json) | auto (json, else text)
        self.squeue_format = (
            squeue_format or os.environ.get("CONVEYOR_SLURM_SQUEUE") or "text"
        ).lower()
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise SlurmError(
                "the Slurm commands (sbatch, squeue, scontrol, scancel) are not on PATH: "
                "run the executor on a login node, or use slurmrestd (--slurm http+unix://…)"
            )

    def _run(
        self,
        argv: list[str],
        *,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{argv[0]}: {exc}") from None
        if proc.returncode not in ok_codes:
            what = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
            raise SlurmError(f"{argv[0]} failed (exit {proc.returncode}): {what[:500]}")
        return proc

    def submit(self, req: JobRequest) -> str:
        env = dict(req.environment)
        for name in _SLURM_CLIENT_ENV:
            if name in os.environ and name not in env:
                env[name] = os.environ[name]
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        proc = self._run(["sbatch", "--parsable", *sbatch_args(req)], stdin=req.script, env=env)
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {proc.stdout.strip()[:200]!r}, not a job id")
        return job_id

    def jobs(self) -> list[SlurmJob]:
        if self.squeue_format in ("auto", "json"):
            proc = self._run(["squeue", "--json", "--states=all"], ok_codes=(0, 1, 2))
            if proc.returncode == 0:
                try:
                    data = json.loads(proc.stdout)
                except ValueError as exc:
                    raise SlurmError(f"squeue --json answered no JSON: {exc}") from None
                return [job_from_json(j) for j in data.get("jobs", [])]
            if self.squeue_format == "json" or "json" not in (proc.stderr or ""):
                what = proc.stderr.strip()[:300]
                raise SlurmError(f"squeue failed (exit {proc.returncode}): {what}")
            log.info("this squeue has no --json; reading its --format output instead")
            self.squeue_format = "text"
        proc = self._run(["squeue", "--noheader", "--states=all", f"--format={TEXT_FORMAT}"])
        return [j for line in proc.stdout.splitlines() if (j := job_from_text(line))]

    def job(self, job_id: str) -> SlurmJob | None:
        proc = self._run(["scontrol", "show", "job", "-o", str(job_id)], ok_codes=(0, 1))
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return None
            raise SlurmError(f"scontrol show job {job_id}: {proc.stderr.strip()[:300]}")
        line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        return job_from_scontrol(line) if line else None

    def cancel(self, job_id: str) -> None:
        proc = self._run(["scancel", str(job_id)], ok_codes=(0, 1))
        if proc.returncode != 0 and not re.search(
            r"already completed|Invalid job id|has already finished", proc.stderr
        ):
            raise SlurmError(f"scancel {job_id}: {proc.stderr.strip()[:300]}")

    def cluster(self) -> ClusterView:
        nodes = self._run(["scontrol", "-o", "-d", "show", "node"]).stdout.splitlines()
        parts = self._run(["scontrol", "-o", "show", "partition"]).stdout.splitlines()
        return ClusterView(
            partitions=[partition_from_scontrol(line) for line in parts if line.strip()],
            nodes=[node_from_scontrol(line) for line in nodes if line.strip()],
        )
