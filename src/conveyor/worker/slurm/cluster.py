"""The cluster as the console's cluster page shows it, read from Slurm.

Partitions (state, nodes up, CPUs and GPUs free), nodes (state, CPUs, GPUs, why a node is
down) and the jobs Conveyor has in Slurm (found by their name and comment: task, attempt,
executor, state and Slurm's reason), through the same adapter the executor uses:
``CONVEYOR_SLURM_API`` (``cli`` by default: the API host must then be a Slurm client,
``SLURM_CONF`` set; or slurmrestd's ``http+unix://`` socket or ``https://`` URL).
A snapshot is kept for a few seconds, so a page left open does not poll Slurm harder
than an executor does.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from . import jobspec
from .adapter import ClusterView, SlurmAdapter, SlurmJob, open_adapter

CACHE_S = 5.0


@dataclass
class PartitionRow:
    name: str
    state: str
    default: bool
    nodes: int
    nodes_up: int
    cpus: int
    cpus_free: int
    gpus: int
    gpus_free: int
    max_time: str


@dataclass
class NodeRow:
    name: str
    state: str
    partitions: list[str]
    cpus: int
    cpus_alloc: int
    gpus: int
    gpus_used: int
    available: bool
    reason: str


@dataclass
class JobRow:
    job_id: str
    task_id: str
    attempt: int
    executor: str
    state: str
    reason: str
    nodes: str
    partition: str


@dataclass
class ClusterSnapshot:
    source: str  # the adapter: cli | rest
    partitions: list[PartitionRow] = field(default_factory=list)
    nodes: list[NodeRow] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    error: str | None = None

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpus_free(self) -> int:
        return sum(max(0, n.gpus - n.gpus_used) for n in self.nodes if n.available)


def build(view: ClusterView, jobs: list[SlurmJob], source: str) -> ClusterSnapshot:
    partitions = []
    for p in view.partitions:
        members = [n for n in view.nodes if n.name in p.nodes or p.name in n.partitions]
        up = [n for n in members if n.available]
        partitions.append(
            PartitionRow(
                name=p.name,
                state=p.state,
                default=p.default,
                nodes=len(members),
                nodes_up=len(up),
                cpus=sum(n.cpus for n in members),
                cpus_free=sum(max(0, n.cpus - n.cpus_alloc) for n in up),
                gpus=sum(n.gpus for n in members),
                gpus_free=sum(n.gpus_free for n in up),
                max_time=p.max_time,
            )
        )
    nodes = [
        NodeRow(
            name=n.name,
            state=n.state,
            partitions=n.partitions,
            cpus=n.cpus,
            cpus_alloc=n.cpus_alloc,
            gpus=n.gpus,
            gpus_used=n.gpus_used,
            available=n.available,
            reason=n.reason,
        )
        for n in view.nodes
    ]
    rows = []
    for j in jobs:
        ours = j.name.startswith(jobspec.NAME_PREFIX)
        parsed = jobspec.parse_comment(j.comment) if ours else None
        if parsed is None or not j.active:
            continue
        rows.append(
            JobRow(
                job_id=j.job_id,
                task_id=parsed[0],
                attempt=parsed[1],
                executor=parsed[2],
                state=j.state,
                reason="" if j.reason in ("None", "(null)") else j.reason,
                nodes=j.nodes,
                partition=j.partition,
            )
        )
    rows.sort(key=lambda r: (r.state != "RUNNING", int(r.job_id) if r.job_id.isdigit() else 0))
    return ClusterSnapshot(source=source, partitions=partitions, nodes=nodes, jobs=rows)


def read(adapter: SlurmAdapter) -> ClusterSnapshot:
    return build(adapter.cluster(), adapter.jobs(), adapter.kind)


_lock = threading.Lock()
_cached: tuple[float, str, ClusterSnapshot] | None = None


def snapshot(spec: str | None = None) -> ClusterSnapshot:
    """What the cluster page shows now (at most ``CACHE_S`` old); ``error`` says why not."""
    global _cached
    spec = spec or os.environ.get("CONVEYOR_SLURM_API") or "cli"
    with _lock:
        if _cached is not None and _cached[1] == spec and time.monotonic() - _cached[0] < CACHE_S:
            return _cached[2]
    try:
        adapter = open_adapter(spec)
        try:
            snap = read(adapter)
        finally:
            adapter.close()
    except Exception as exc:
        snap = ClusterSnapshot(source=spec, error=str(getattr(exc, "message", exc)))
    with _lock:
        _cached = (time.monotonic(), spec, snap)
    return snap
