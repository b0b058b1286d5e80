"""Why a pending task is not being taken, from what the live workers report.

Computed when a task is read (one read of the workers list, only for a
pending task), never stored: workers report ``gpus`` and ``gpus_in_use``
with every heartbeat, and ``capabilities["unavailable"][kind]`` for a kind
they do not take and why (a container worker without an engine, whose
operator did not turn the local runner on), so the answer is as fresh as the
last heartbeat and costs nothing while nobody looks.  Faces show :meth:`WaitReason.text`
(API, English) or translate ``code`` with the numbers (console).

A task can also wait after it was claimed: an executor that runs attempts in an
external scheduler (the Slurm executor) holds the lease while the scheduler queues
the job, and reports that as progress in phase :data:`SCHEDULER_PHASE` with the
scheduler's own reason as the message (``Slurm job 42 pending: Resources``);
:func:`scheduler_wait` reads it back as the task's waiting reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from conveyor.models import SCHEDULER_PHASE, Task, TaskStatus, WorkerInfo

MAX_DETAIL = 300  # a worker's reason is shown, not stored: keep it to a line


@dataclass(frozen=True)
class WaitReason:
    # no_worker: no live worker runs the kind; unavailable: none runs it, and live
    # workers say why (``detail``); no_gpus: none of them has GPUs; too_few_gpus:
    # none has as many as the task needs; gpus_busy: one has, but not free now
    code: str
    kind: str
    needs: int = 0
    has: int = 0  # no_gpus: 0; too_few_gpus: the largest worker's GPUs; gpus_busy: most free
    detail: str = ""  # unavailable: the reason most live workers give
    workers: int = 0  # unavailable: how many live workers give it

    def text(self) -> str:
        need = f"needs {self.needs} GPU{'' if self.needs == 1 else 's'}"
        if self.code == "no_worker":
            return f"no live worker runs {self.kind} tasks"
        if self.code == "unavailable":
            return f"no live worker runs {self.kind} tasks: {self.detail}"
        if self.code == "no_gpus":
            return f"{need}; no worker has GPUs"
        if self.code == "too_few_gpus":
            return f"{need}; largest worker has {self.has}"
        return f"{need}; largest free worker has {self.has}"


def why_waiting(task: Task, workers: list[WorkerInfo]) -> WaitReason | None:
    """Why no live worker can take ``task`` now, or None (not pending, or one can).

    A task in its retry back-off is not explained here: ``not_before`` says
    when it comes back.  A worker that could take the task but has no free
    slot is not a reason either: the task is next in line.
    """
    if task.status != TaskStatus.PENDING or task.delayed:
        return None
    able = [w for w in workers if task.kind in w.kinds]
    if not able:
        reasons = Counter(r for w in workers if (r := unavailable_reason(w, task.kind)))
        if reasons:
            detail, n = reasons.most_common(1)[0]
            return WaitReason("unavailable", task.kind, detail=detail, workers=n)
        return WaitReason("no_worker", task.kind)
    if task.gpus == 0:
        return None
    usage = [w.gpu_usage() for w in able]
    largest = max(total for total, _ in usage)
    most_free = max(max(0, total - used) for total, used in usage)
    if largest == 0:
        return WaitReason("no_gpus", task.kind, task.gpus)
    if largest < task.gpus:
        return WaitReason("too_few_gpus", task.kind, task.gpus, largest)
    if most_free < task.gpus:
        return WaitReason("gpus_busy", task.kind, task.gpus, most_free)
    return None


def unavailable_reason(worker: WorkerInfo, kind: str) -> str:
    """Why ``worker`` does not take ``kind`` tasks, as it reported at start, or ""."""
    unavailable = worker.capabilities.get("unavailable")
    if not isinstance(unavailable, dict):
        return ""
    why = " ".join(str(unavailable.get(kind) or "").split())
    return why if len(why) <= MAX_DETAIL else why[: MAX_DETAIL - 1] + "…"


def scheduler_wait(task: Task) -> str | None:
    """Why a claimed task still waits: its attempt is queued in an external scheduler
    (progress phase :data:`SCHEDULER_PHASE`, the scheduler's reason as the message)."""
    if task.status != TaskStatus.PROCESSING or task.progress.phase != SCHEDULER_PHASE:
        return None
    why = " ".join(task.progress.message.split())
    if not why:
        return None
    return why if len(why) <= MAX_DETAIL else why[: MAX_DETAIL - 1] + "…"
