"""The task model shared by every backend, processor and face."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from ulid import ULID


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_task_id() -> str:
    """Time-ordered ids keep keyset paging and 'oldest first' claims cheap."""
    return str(ULID()).lower()


def date_partition(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d")


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class Trigger(StrEnum):
    API = "api"
    UPLOAD = "upload"
    CLI = "cli"
    CONSOLE = "console"


class InputRef(BaseModel):
    bucket: str
    key: str


class OutputFile(BaseModel):
    """One produced object; ``name`` is the rendition/type it stands for."""

    name: str
    bucket: str
    key: str
    size: int = 0
    content_type: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    # where the attempt that completed the task staged it, until it is moved to ``key``
    # (conveyor.outputs); None once it is visible there
    staged_key: str | None = None


# the progress phase of an attempt queued in an external scheduler (a pending Slurm job:
# its reason is the message); conveyor.service.waiting reads it as why the task waits
SCHEDULER_PHASE = "scheduler"


class Progress(BaseModel):
    percent: float = 0.0
    phase: str = ""
    message: str = ""


class Attempt(BaseModel):
    """One delivery of a task to a worker, kept for the task's history."""

    number: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    # completed | failed | retry | lease_expired | cancelled | released | spawned
    outcome: str | None = None
    error: str | None = None


def gpus_in_params(kind: str, params: dict[str, Any]) -> int:
    """GPUs a task asks for in its params, by its kind's rule (a processor's
    ``gpus_in_params``; none for a kind not installed here).

    The service derives ``Task.gpus`` through the kind's processor at submit;
    this is the same rule for records written before ``gpus`` was a field
    (the SQL migrations backfill with it, DynamoDB records read with it).
    """
    from conveyor.processors import installed

    proc = installed().get(kind)
    return proc.gpus_in_params(params) if proc is not None else 0


def _default_kind() -> str:
    """The kind a task gets when none is named: the installed kinds' default."""
    from conveyor.processors import default_kind

    return default_kind()


# A parent waiting for its children is pending with this ``not_before``: no claim query
# needs a change (it is never due), and the last child's completion clears it.  Defined
# here, not in backends/rules.py (which re-exports it), because the model reads it and
# imports nothing of Conveyor.
CHILDREN_HOLD = datetime(9999, 1, 1, tzinfo=UTC)


class Task(BaseModel):
    id: str = Field(default_factory=new_task_id)
    kind: str = Field(default_factory=_default_kind)
    status: TaskStatus = TaskStatus.PENDING
    priority: int = 0
    # GPUs the task needs on one worker; a claim passes over tasks needing more than are free
    gpus: int = Field(0, ge=0)
    input: InputRef | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: list[OutputFile] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    attempts: int = 0
    max_attempts: int = 3
    error: str | None = None
    error_code: str | None = None
    worker_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    not_before: datetime | None = None
    date_partition: str = ""
    idempotency_key: str | None = None
    # the caller's own id for the task (indexed: GET /api/tasks?external_id=) and its own
    # small JSON object, both returned untouched and carried by every event (docs/events.md)
    external_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    submitted_by: str | None = None
    trigger: Trigger = Trigger.API
    cancel_requested: bool = False
    history: list[Attempt] = Field(default_factory=list)
    # read-time only, never stored: why no live worker can take this pending task
    waiting_reason: str | None = None
    # parent and children (WorkerQueue.spawn_children): a child names its parent; a parent
    # counts the children its last spawn made (0: none).  A parent waiting for them is
    # pending with ``not_before = CHILDREN_HOLD`` (see ``waiting_for_children``)
    parent_id: str | None = None
    children: int = Field(0, ge=0)

    def model_post_init(self, __context: Any) -> None:
        if not self.date_partition:
            self.date_partition = date_partition(self.created_at)

    @property
    def delayed(self) -> bool:
        """Pending in a retry back-off (or a release's delay); a parent held for its
        children is not delayed but ``waiting_for_children``."""
        return (
            self.status == TaskStatus.PENDING
            and self.not_before is not None
            and utcnow() < self.not_before < CHILDREN_HOLD
        )

    @property
    def waiting_for_children(self) -> bool:
        """Handed back by ``spawn_children`` and held until its last child completes."""
        return (
            self.status == TaskStatus.PENDING
            and self.children > 0
            and self.not_before is not None
            and self.not_before >= CHILDREN_HOLD
        )


class Lease(BaseModel):
    """Proof that a worker holds a task; every write from the worker carries it."""

    task_id: str
    token: str
    worker_id: str
    attempt: int
    expires_at: datetime


class ClaimedTask(BaseModel):
    task: Task
    lease: Lease


class WorkerInfo(BaseModel):
    """What a worker tells the backend about itself on every heartbeat."""

    id: str
    hostname: str = ""
    pid: int = 0
    kinds: list[str] = Field(default_factory=list)
    concurrency: int = 1
    running: list[str] = Field(default_factory=list)
    capabilities: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)
    version: str = ""
    gpus: int = 0  # GPUs in the worker's inventory
    gpus_in_use: int = 0  # GPUs its running tasks asked for (claimed, started or not)

    def gpu_usage(self) -> tuple[int, int]:
        """(GPUs, GPUs in use), also from ``capabilities`` as workers before these fields sent."""
        total, in_use = self.gpus, self.gpus_in_use
        for where in (self.capabilities, *self.capabilities.values()):
            if isinstance(where, dict):
                total = max(total, _gpu_count(where.get("gpus")))
                in_use = max(in_use, _gpu_count(where.get("gpus_in_use")))
        return total, in_use


def _gpu_count(value: Any) -> int:
    """Capabilities report GPUs as a list of ids or a number."""
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return 0


class HeartbeatResult(BaseModel):
    renewed: list[str] = Field(default_factory=list)
    lost: list[str] = Field(default_factory=list)  # leases the worker no longer holds
    cancel: list[str] = Field(default_factory=list)  # tasks whose cancel was requested


class Page(BaseModel):
    items: list[Task]
    next_cursor: str | None = None


class QueueCounts(BaseModel):
    pending: int = 0  # ready to run now
    delayed: int = 0  # pending, waiting for a retry back-off
    waiting_for_children: int = 0  # pending, a parent held until its children complete
    processing: int = 0
    completed_today: int = 0
    failed_today: int = 0
    cancelled_today: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)

    def by_status_counts(self) -> dict[str, int]:
        """``by_status``: pending counts every pending task, whatever it waits for."""
        return {
            "pending": self.pending + self.delayed + self.waiting_for_children,
            "processing": self.processing,
        }


class LogLine(BaseModel):
    seq: int
    attempt: int
    ts: datetime
    stream: str = "worker"
    line: str
