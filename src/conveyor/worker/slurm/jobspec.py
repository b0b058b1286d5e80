"""What the executor submits for one attempt: resources, names, environment, the script.

Pure functions of the task, its lease and the executor's :class:`SlurmConfig`, so
the argument building is unit-tested without a cluster (the test cluster has no
GPUs: ``--gres=gpu:N`` is checked here, in tests/unit/test_slurm.py).

* resources: ``--gres=gpu:N`` from the task's GPU request (``Task.gpus``) when > 0;
  ``--cpus-per-task`` from ``params.cpus`` (rounded up) or the executor's default;
  ``--mem`` from ``params.memory`` (bytes, rounded up to MiB) or the default;
  ``--time`` from ``params.timeout_s`` (or ``CONVEYOR_TASK_TIMEOUT``), in whole
  minutes, rounded up;
* ``--job-name=cvy-<task id>-<attempt>`` and
  ``--comment=conveyor:task=<task id>,attempt=<n>,worker=<executor id>``: how a
  restarted executor finds its jobs again (:func:`parse_comment`);
* ``--output`` (and ``--error``): ``<output dir>/conveyor-<task id>-<attempt>.out`` on
  the compute node;
* the environment: only what the job needs (:func:`job_environment`): never the
  executor's own credential, database or store URLs; the task credential and the
  lease travel in ``CONVEYOR_SLURM_JOB``, which the job removes from its environment
  before anything else runs.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.models import Lease, Task
from conveyor.processors import LOAD_KINDS_ENV, installed

from .adapter import JobRequest

NAME_PREFIX = "cvy-"
SPEC_ENV = "CONVEYOR_SLURM_JOB"
_COMMENT = re.compile(r"^conveyor:task=([0-9a-z]{26}),attempt=(\d+),worker=(\S+)$")
MAX_TIME_MIN = 7 * 1440 + 60  # timeout_s is at most 7 days at submit

# passed to the job as they are on the login node
BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)
# never passed: the executor's own credentials and its (login node's) places
DENIED = frozenset(
    {
        "CONVEYOR_WORKER_CREDENTIAL",
        "CONVEYOR_ENROLL_TOKEN",
        "CONVEYOR_TOKEN",
        "CONVEYOR_BACKEND_URL",
        "CONVEYOR_STORAGE_URL",
        "CONVEYOR_SLURM_JWT",
        "CONVEYOR_DATA_DIR",
        "CONVEYOR_TEMP_DIR",
        "TEMP_DIR",
        SPEC_ENV,
    }
)
# bandit B105: the names of the secrets' variables begin so; no secret is in the code
SECRET_PREFIX = "CONVEYOR_SECRET_"  # nosec B105


@dataclass
class SlurmConfig:
    """The executor's Slurm options (``conveyor worker --executor slurm …``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    api: str = "cli"  # cli | http+unix:///path | http(s)://host:port (slurmrestd)
    python: str = field(default_factory=lambda: sys.executable)
    # bandit B108: folders on the compute node; the file names in them are ours
    output_dir: str = "/tmp"  # nosec B108
    workdir: str = "/tmp"  # nosec B108
    default_cpus: int = 1
    default_mem_mb: int | None = None
    job_env: list[str] = field(default_factory=list)  # NAME or NAME=VALUE
    extra_args: list[str] = field(default_factory=list)  # more sbatch options
    poll_s: float = 1.0
    # how long a job may wait in Slurm's queue and still start (its credential's life
    # beyond its time limit)
    queue_allowance_s: float = 3 * 86400.0


@dataclass(frozen=True)
class JobSpec:
    """What the job reads from ``CONVEYOR_SLURM_JOB``: where the API is, its credential,
    the lease it works under, and its time limit."""

    api: str
    credential: str | None
    lease: Lease
    time_limit_min: int | None = None
    ca_cert: str | None = None

    def encode(self) -> str:
        body = {
            "api": self.api,
            "credential": self.credential,
            "lease": self.lease.model_dump(mode="json"),
            "time_limit_min": self.time_limit_min,
            "ca_cert": self.ca_cert,
        }
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> JobSpec:
        data = json.loads(base64.urlsafe_b64decode(text.encode()))
        return cls(
            api=str(data["api"]),
            credential=data.get("credential"),
            lease=Lease.model_validate(data["lease"]),
            time_limit_min=data.get("time_limit_min"),
            ca_cert=data.get("ca_cert"),
        )

    def __repr__(self) -> str:  # never print the credential or the lease token
        return f"JobSpec(api={self.api!r}, task={self.lease.task_id}, attempt={self.lease.attempt})"

    __str__ = __repr__


def job_name(task_id: str, attempt: int) -> str:
    return f"{NAME_PREFIX}{task_id}-{attempt}"


def comment(task_id: str, attempt: int, worker_id: str) -> str:
    return f"conveyor:task={task_id},attempt={attempt},worker={worker_id}"


def parse_comment(text: str) -> tuple[str, int, str] | None:
    """``(task id, attempt, executor id)`` from a job's comment, or None: not one of ours."""
    m = _COMMENT.match((text or "").strip())
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def check_worker_id(worker_id: str) -> str:
    """An executor's id goes into every job's comment: no spaces, commas or '|'."""
    if not worker_id or re.search(r"[\s,|=]", worker_id):
        raise ValueError(
            f"a Slurm executor's id may not hold spaces, ',', '=' or '|': {worker_id!r}"
        )
    return worker_id


def cpus_of(task: Task, cfg: SlurmConfig) -> int:
    value = task.params.get("cpus")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return max(1, math.ceil(value))
    return max(1, cfg.default_cpus)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def mem_mb_of(task: Task, cfg: SlurmConfig) -> int | None:
    """``params.memory`` in MiB, rounded up: bytes, or a size as tasks write it (``512m``,
    ``4g``, ``4GiB``; the params keep what the submitter wrote)."""
    value = task.params.get("memory")
    size: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if size is not None and size > 0:
        return max(1, math.ceil(size / 1024**2))
    return cfg.default_mem_mb


def time_limit_min(task: Task, default_timeout_s: float) -> int:
    wanted = task.params.get("timeout_s")
    seconds = float(wanted) if isinstance(wanted, int | float) and wanted > 0 else default_timeout_s
    return max(1, min(MAX_TIME_MIN, math.ceil(seconds / 60.0)))


def job_environment(
    task: Task,
    cfg: SlurmConfig,
    *,
    spec: JobSpec,
    settings_env: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    secrets: list[str] | None = None,
) -> dict[str, str]:
    """The job's whole environment: base variables, the operator's ``CONVEYOR_*`` settings
    (not credentials or login-node places), ``--job-env`` ones, the secrets the task
    asks for (``CONVEYOR_SECRET_<NAME>``, granted at submit), and the job spec."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in BASE_ENV if name in environ}
    for name, value in environ.items():
        if (
            name.startswith("CONVEYOR_")
            and name not in DENIED
            and not name.startswith(SECRET_PREFIX)
        ):
            env[name] = value
    for name in secrets or []:
        var = f"{SECRET_PREFIX}{name}"
        if var in environ:
            env[var] = environ[var]
    for item in cfg.job_env:
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in environ:
            env[name] = environ[name]
    env.update(settings_env)
    env[LOAD_KINDS_ENV] = kind_to_load(task.kind)  # the job imports its task's kind only
    env[SPEC_ENV] = spec.encode()
    return env


def kind_to_load(kind: str) -> str:
    """``kind=module:Class``, where this process found the kind's processor: the job
    imports that module alone, without reading every installed package's entry points
    (``conveyor.processors.installed``; a node whose Python lacks it looks it up)."""
    cls = installed().get(kind)
    return f"{kind}={cls.__module__}:{cls.__qualname__}" if cls is not None else kind


def script(cfg: SlurmConfig, task: Task, attempt: int) -> str:
    """The batch script: run one attempt with the same processors as any worker."""
    return (
        "#!/bin/sh\n"
        f"# Conveyor task {task.id} ({task.kind}), attempt {attempt}: one attempt, "
        "run by `conveyor worker --executor slurm`\n"
        f"exec {shlex.quote(cfg.python)} -m conveyor.worker.slurm.job\n"
    )


def build_request(
    task: Task,
    lease: Lease,
    cfg: SlurmConfig,
    *,
    worker_id: str,
    spec: JobSpec,
    settings_env: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    secrets: list[str] | None = None,
) -> JobRequest:
    name = job_name(task.id, lease.attempt)
    return JobRequest(
        name=name,
        comment=comment(task.id, lease.attempt, worker_id),
        script=script(cfg, task, lease.attempt),
        partition=cfg.partition,
        account=cfg.account,
        qos=cfg.qos,
        cpus_per_task=cpus_of(task, cfg),
        mem_mb=mem_mb_of(task, cfg),
        time_limit_min=spec.time_limit_min,
        gpus=task.gpus,
        output=os.path.join(cfg.output_dir, f"conveyor-{task.id}-{lease.attempt}.out"),
        workdir=cfg.workdir,
        environment=job_environment(
            task, cfg, spec=spec, settings_env=settings_env, environ=environ, secrets=secrets
        ),
        extra_args=list(cfg.extra_args),
    )


def describe(req: JobRequest) -> str:
    """One line for the task's log: what was asked of Slurm."""
    parts = [f"partition={req.partition or '(default)'}", f"cpus={req.cpus_per_task}"]
    if req.mem_mb:
        parts.append(f"mem={req.mem_mb}M")
    if req.time_limit_min:
        parts.append(f"time={req.time_limit_min}min")
    if req.gpus:
        parts.append(f"gres=gpu:{req.gpus}")
    for name, value in (("account", req.account), ("qos", req.qos)):
        if value:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def settings_environment(settings: Any) -> dict[str, str]:
    """The executor's settings a job must share: the buckets, lease timings."""
    return {
        "CONVEYOR_INPUT_BUCKET": str(settings.input_bucket),
        "CONVEYOR_OUTPUT_BUCKET": str(settings.output_bucket),
        "CONVEYOR_LEASE_SECONDS": str(settings.lease_seconds),
        "CONVEYOR_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "CONVEYOR_LOG_FORMAT": str(settings.log_format),
        "CONVEYOR_LOG_LEVEL": str(settings.log_level),
    }
