"""The one small adapter that talks to Slurm: submit, list, look up, cancel; the cluster.

Two implementations behind :class:`SlurmAdapter`, chosen by configuration
(:func:`open_adapter`, ``--slurm`` / ``CONVEYOR_SLURM_API``):

* :class:`~conveyor.worker.slurm.cli.CliAdapter` (``cli``, the default): the Slurm
  commands of a login node: ``sbatch --parsable``, ``squeue --json`` (or
  ``--format`` where ``--json`` is missing), ``scontrol show job``, ``scancel``,
  ``scontrol show node`` / ``partition``;
* :class:`~conveyor.worker.slurm.rest.RestAdapter` (``http+unix:///path/to/socket``,
  ``http://host:6820``, ``https://…``): ``slurmrestd``'s REST API (OpenAPI v0.0.38,
  Slurm 22.05), over its UNIX socket with local authentication or over TCP with a JWT
  (``CONVEYOR_SLURM_USER`` / ``CONVEYOR_SLURM_JWT``).

Everything above this file sees only the models here, so the executor and the
console's cluster page do not know which one they use.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from conveyor.errors import ConveyorError

from .states import is_active, is_terminal, normal_state


class SlurmError(ConveyorError):
    """Slurm refused or could not be reached (``sbatch`` failed, slurmrestd answered an error)."""

    code = "slurm_error"
    http_status = 502


@dataclass
class JobRequest:
    """One batch job, as the executor wants it submitted."""

    name: str
    comment: str
    script: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int = 1
    mem_mb: int | None = None
    time_limit_min: int | None = None
    gpus: int = 0
    output: str | None = None
    # bandit B108: a folder on the compute node, where the job starts (it works below TMPDIR)
    workdir: str = "/tmp"  # nosec B108
    environment: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # sbatch only (site options)


@dataclass
class SlurmJob:
    job_id: str
    name: str
    state: str  # normalised: PENDING, RUNNING, COMPLETED, …
    reason: str = ""
    comment: str = ""
    user: str = ""
    partition: str = ""
    nodes: str = ""
    exit_code: int | None = None
    signal: int | None = None
    time_limit_min: int | None = None
    submit_time: int | None = None
    cpus: int | None = None
    gres: str = ""

    @property
    def active(self) -> bool:
        return is_active(self.state)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)


@dataclass
class SlurmNode:
    name: str
    state: str
    partitions: list[str] = field(default_factory=list)
    cpus: int = 0
    cpus_alloc: int = 0
    memory_mb: int = 0
    memory_alloc_mb: int = 0
    gpus: int = 0
    gpus_used: int = 0
    reason: str = ""

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus - self.gpus_used) if self.available else 0

    @property
    def available(self) -> bool:
        """Up and taking jobs (not down, drained, draining or failing)."""
        s = self.state.upper()
        return not any(w in s for w in ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "FUTURE"))


@dataclass
class SlurmPartition:
    name: str
    state: str
    nodes: list[str] = field(default_factory=list)
    total_cpus: int = 0
    max_time: str = ""
    default: bool = False


@dataclass
class ClusterView:
    partitions: list[SlurmPartition]
    nodes: list[SlurmNode]

    def partition_nodes(self, partition: str) -> list[SlurmNode]:
        return [n for n in self.nodes if partition in n.partitions]


class SlurmAdapter(ABC):
    """What Conveyor asks of Slurm (module docs)."""

    kind = "?"

    @abstractmethod
    def submit(self, req: JobRequest) -> str:
        """Submit a batch job; its id.  ``SlurmError`` when Slurm refuses it."""

    @abstractmethod
    def jobs(self) -> list[SlurmJob]:
        """Every job Slurm still knows (pending, running and recently ended), any user."""

    @abstractmethod
    def job(self, job_id: str) -> SlurmJob | None:
        """One job, or None when Slurm no longer knows it."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """scancel (a job already over is no error)."""

    @abstractmethod
    def cluster(self) -> ClusterView:
        """Partitions and nodes with their state, CPUs and GPUs."""

    def ping(self) -> None:
        self.cluster()

    def close(self) -> None:  # noqa: B027 - optional
        pass


# -- shared parsing ------------------------------------------------------------------------
_GPU = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def gpu_count(gres: str | None) -> int:
    """GPUs in a GRES string: ``gpu:4``, ``gpu:a100:2(S:0-1),gpu:v100:1`` → 4, 3."""
    if not gres or gres in ("(null)", "N/A"):
        return 0
    return sum(int(n) for n in _GPU.findall(gres.replace(" ", "")))


def expand_hostlist(expr: str) -> list[str]:
    """``c[01-03,07],gpu1`` → ``[c01, c02, c03, c07, gpu1]`` (one bracket level, Slurm's form)."""
    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", expr or ""):
        m = re.match(r"^(.*?)\[([^\]]*)\](.*)$", part)
        if not m:
            if part and part not in ("(null)",):
                out.append(part)
            continue
        head, body, tail = m.groups()
        for item in body.split(","):
            if "-" in item:
                lo, hi = item.split("-", 1)
                width = len(lo)
                out += [f"{head}{i:0{width}d}{tail}" for i in range(int(lo), int(hi) + 1)]
            else:
                out.append(f"{head}{item}{tail}")
    return out


def minutes(value: str | int | None) -> int | None:
    """A Slurm time limit (``UNLIMITED``, ``30``, ``1:00:00``, ``2-00:00:00``) in minutes."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", "PARTITION_LIMIT"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        return days * 1440 + parts[0]
    if len(parts) == 2:  # mm:ss
        return days * 1440 + parts[0] + (1 if parts[1] else 0)
    h, m, s = parts[-3:]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def open_adapter(
    spec: str | None = None,
    *,
    squeue_format: str | None = None,
    user: str | None = None,
    token: str | None = None,
) -> SlurmAdapter:
    """``cli`` (or empty): the Slurm commands; ``http+unix://PATH``, ``http://``,
    ``https://``: slurmrestd."""
    spec = (spec or "cli").strip()
    if spec in ("cli", "auto"):
        from .cli import CliAdapter

        return CliAdapter(squeue_format=squeue_format)
    if spec.startswith(("http+unix://", "http://", "https://")):
        from .rest import RestAdapter

        return RestAdapter(spec, user=user, token=token)
    raise ConveyorError(
        f"unknown Slurm API {spec!r}: use cli, http+unix:///path/to/slurmrestd.socket, "
        "or http(s)://host:port (slurmrestd)"
    )


__all__ = [
    "ClusterView",
    "JobRequest",
    "SlurmAdapter",
    "SlurmError",
    "SlurmJob",
    "SlurmNode",
    "SlurmPartition",
    "expand_hostlist",
    "gpu_count",
    "minutes",
    "normal_state",
    "open_adapter",
]
