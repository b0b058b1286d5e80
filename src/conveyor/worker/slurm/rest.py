"""Slurm through ``slurmrestd`` (``--slurm http+unix:///run/slurmrestd.socket`` or ``https://…``).

Two ways in, as slurmrestd offers them:

* ``http+unix://<socket path>``: slurmrestd's UNIX socket with ``rest_auth/local``.
  slurmrestd identifies the caller by the socket's peer credentials and speaks to
  slurmctld as that user with MUNGE; the socket's permissions are the access control.
* ``http://`` / ``https://`` with a JWT: ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``
  from ``CONVEYOR_SLURM_USER`` / ``CONVEYOR_SLURM_JWT`` (``scontrol token``); needs a
  Slurm built with ``auth/jwt`` (Debian 12's is not: see docs/slurm.md).

The paths are OpenAPI ``v0.0.38`` (Slurm 22.05; ``CONVEYOR_SLURM_API_VERSION`` picks
another of the same shape); jobs come back in the same JSON as ``squeue --json``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

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
)
from .cli import job_from_json

DEFAULT_VERSION = "v0.0.38"
_NOT_FOUND = (2017,)  # ESLURM_INVALID_JOB_ID


def rest_job(req: JobRequest) -> dict[str, Any]:
    """The ``job`` of ``POST /slurm/<v>/job/submit`` for ``req``."""
    job: dict[str, Any] = {
        "name": req.name,
        "comment": req.comment,
        "requeue": False,
        "current_working_directory": req.workdir,
        # slurmrestd wants one; a job given none gets a bare PATH, as sbatch --export=NONE
        "environment": dict(req.environment) or {"PATH": "/usr/bin:/bin"},
        "tasks": 1,
        "cpus_per_task": max(1, req.cpus_per_task),
    }
    for name, value in (("partition", req.partition), ("account", req.account), ("qos", req.qos)):
        if value:
            job[name] = value
    if req.mem_mb:
        job["memory_per_node"] = req.mem_mb
    if req.time_limit_min:
        job["time_limit"] = req.time_limit_min
    if req.gpus > 0:
        job["tres_per_node"] = f"gres:gpu:{req.gpus}"
    if req.output:
        job["standard_output"] = req.output
        job["standard_error"] = req.output
    return job


class RestAdapter(SlurmAdapter):
    kind = "rest"

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        token: str | None = None,
        version: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.version = version or os.environ.get("CONVEYOR_SLURM_API_VERSION") or DEFAULT_VERSION
        headers: dict[str, str] = {}
        parts = urlsplit(url)
        if parts.scheme == "http+unix":
            path = unquote(parts.netloc + parts.path) if parts.netloc else unquote(parts.path)
            transport = httpx.HTTPTransport(uds=path)
            self.client = httpx.Client(
                transport=transport, base_url="http://slurmrestd", timeout=timeout
            )
            self.where = path
        else:
            user = user or os.environ.get("CONVEYOR_SLURM_USER")
            token = token or os.environ.get("CONVEYOR_SLURM_JWT")
            if not (user and token):
                raise SlurmError(
                    "slurmrestd over TCP needs a JWT: set CONVEYOR_SLURM_USER and "
                    "CONVEYOR_SLURM_JWT (scontrol token), or use its UNIX socket "
                    "(http+unix:///path)"
                )
            headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
            self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)
            self.where = url

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            resp = self.client.request(method, f"/slurm/{self.version}{path}", json=body)
        except httpx.HTTPError as exc:
            raise SlurmError(f"slurmrestd at {self.where}: {exc!r}") from None
        try:
            data: dict[str, Any] = resp.json()
        except ValueError:
            raise SlurmError(f"slurmrestd answered {resp.status_code}: {resp.text[:300]}") from None
        if resp.status_code in (401, 403):
            raise SlurmError(f"slurmrestd refused the credentials ({resp.status_code})")
        return data

    @staticmethod
    def _errors(data: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in data.get("errors") or [] if isinstance(e, dict)]

    def _check(self, data: dict[str, Any], what: str) -> None:
        errors = self._errors(data)
        if errors:
            text = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors)
            raise SlurmError(f"slurmrestd {what}: {text[:500]}")

    def submit(self, req: JobRequest) -> str:
        data = self._call("POST", "/job/submit", {"job": rest_job(req), "script": req.script})
        self._check(data, "refused the job")
        job_id = data.get("job_id")
        if job_id is None:
            raise SlurmError(f"slurmrestd answered no job id: {str(data)[:300]}")
        return str(job_id)

    def jobs(self) -> list[SlurmJob]:
        data = self._call("GET", "/jobs")
        self._check(data, "jobs")
        return [job_from_json(j) for j in data.get("jobs") or []]

    def job(self, job_id: str) -> SlurmJob | None:
        data = self._call("GET", f"/job/{job_id}")
        errors = self._errors(data)
        if any(e.get("error_number") in _NOT_FOUND for e in errors):
            return None
        self._check(data, f"job {job_id}")
        jobs = data.get("jobs") or []
        return job_from_json(jobs[0]) if jobs else None

    def cancel(self, job_id: str) -> None:
        data = self._call("DELETE", f"/job/{job_id}")
        errors = [e for e in self._errors(data) if e.get("error_number") not in _NOT_FOUND]
        # a job that already ended: "Job/step already completing or completed"
        if errors and not all("complet" in str(e.get("error", "")).lower() for e in errors):
            self._check({"errors": errors}, f"cancel {job_id}")

    def cluster(self) -> ClusterView:
        nodes = self._call("GET", "/nodes")
        self._check(nodes, "nodes")
        parts = self._call("GET", "/partitions")
        self._check(parts, "partitions")
        return ClusterView(
            partitions=[
                SlurmPartition(
                    name=str(p.get("name") or ""),
                    state=str(p.get("state") or ""),
                    nodes=expand_hostlist(str(p.get("nodes") or "")),
                    total_cpus=int(p.get("total_cpus") or 0),
                    max_time=_limit(p.get("max_time_limit")),
                    default="default" in (p.get("flags") or []),
                )
                for p in parts.get("partitions") or []
            ],
            nodes=[
                SlurmNode(
                    name=str(n.get("name") or ""),
                    state="+".join(
                        [str(n.get("state") or "").upper()]
                        + [str(f).upper() for f in n.get("state_flags") or []]
                    ),
                    partitions=[str(p) for p in n.get("partitions") or []],
                    cpus=int(n.get("cpus") or 0),
                    cpus_alloc=int(n.get("alloc_cpus") or 0),
                    memory_mb=int(n.get("real_memory") or 0),
                    memory_alloc_mb=int(n.get("alloc_memory") or 0),
                    gpus=gpu_count(str(n.get("gres") or "")),
                    gpus_used=gpu_count(str(n.get("gres_used") or "")),
                    reason=str(n.get("reason") or ""),
                )
                for n in nodes.get("nodes") or []
            ],
        )

    def close(self) -> None:
        self.client.close()


def _limit(value: Any) -> str:
    if value in (None, -1, "") or (isinstance(value, int) and value < 0):
        return "UNLIMITED"
    return str(value)
