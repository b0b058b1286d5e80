"""What each page shows, read through the service (never a backend): shared by
the page routes and by the live stream, so a page and its updates agree.

Everything here is synchronous; routes run it in the thread pool.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from conveyor.models import Task, TaskStatus, WorkerInfo
from conveyor.service import ConveyorService, QueueStatus

T = TypeVar("T")

RECENT = 10
RUNNING_SHOWN = 100
WAITING_SHOWN = 20
LOG_PAGE = 1000
LOG_PAGES_SHOWN = 5
OWNER_COUNTS_TTL = 2.0


class TTLCache:
    """Reads shared by every open console for a moment: N browsers, one query."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, ttl: float, fn: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < ttl:
            value: T = hit[1]
            return value
        value = fn()
        with self._lock:
            self._items[key] = (now, value)
        return value


@dataclass
class WorkerView:
    info: WorkerInfo
    tasks: list[Task] = field(default_factory=list)


def running(service: ConveyorService) -> list[Task]:
    return service.list(status=TaskStatus.PROCESSING.value, limit=RUNNING_SHOWN).items


def mine(tasks: list[Task], owner: str | None) -> list[Task]:
    """A submitter (``owner``) sees its own tasks on shared panels."""
    return tasks if owner is None else [t for t in tasks if t.submitted_by == owner]


def workers(service: ConveyorService, tasks: list[Task]) -> tuple[list[WorkerView], list[Task]]:
    """Active workers with the tasks each is running; tasks of workers no longer seen."""
    views = [WorkerView(info=w) for w in service.workers()]
    by_id = {v.info.id: v for v in views}
    orphans: list[Task] = []
    for task in tasks:
        owner = by_id.get(task.worker_id or "")
        if owner is None:
            orphans.append(task)
        else:
            owner.tasks.append(task)
    return views, orphans


def chart(service: ConveyorService) -> dict[str, Any]:
    points = service.throughput(hours=24, bucket_s=3600)
    completed = [p.completed for p in points]
    failed = [p.failed for p in points]
    rate: list[float | None] = [
        round(100.0 * f / (c + f), 1) if c + f else None
        for c, f in zip(completed, failed, strict=True)
    ]
    total_c, total_f = sum(completed), sum(failed)
    overall = 100.0 * total_f / (total_c + total_f) if total_c + total_f else 0.0
    data = {
        "t": [int(p.start.timestamp()) for p in points],
        "completed": completed,
        "failed": failed,
        "rate": rate,
    }
    return {
        "chart": {"completed": total_c, "failed": total_f, "rate": f"{overall:.1f}"},
        "chart_json": json.dumps(data, separators=(",", ":")),
    }


def dashboard(
    service: ConveyorService, cache: TTLCache | None = None, owner: str | None = None
) -> dict[str, Any]:
    """``owner``: a submitter, who sees its own tasks and counts only."""
    c = cache or TTLCache()
    qs = queue_status(service, c, owner)
    tasks = mine(c.get("running", 0.5, lambda: running(service)), owner)
    views, orphans = workers(service, tasks)
    if owner is None:
        recent = c.get("recent", 0.5, lambda: service.list(limit=RECENT).items)
    else:
        recent = service.list(limit=RECENT, owner=owner).items
    return {
        "qs": qs,
        "workers": views,
        "orphans": orphans,
        "recent": recent,
        **c.get("chart", 15.0, lambda: chart(service)),
    }


def queue(
    service: ConveyorService, cache: TTLCache | None = None, owner: str | None = None
) -> dict[str, Any]:
    """``owner``: a submitter, who sees its own running and waiting tasks only."""
    c = cache or TTLCache()
    waiting = (
        c.get(
            "waiting",
            0.5,
            lambda: service.list(status=TaskStatus.PENDING.value, limit=WAITING_SHOWN).items,
        )
        if owner is None
        else service.list(status=TaskStatus.PENDING.value, limit=WAITING_SHOWN, owner=owner).items
    )
    return {
        "qs": queue_status(service, c, owner),
        "running": mine(c.get("running", 0.5, lambda: running(service)), owner),
        "waiting": waiting,
    }


def queue_status(
    service: ConveyorService, cache: TTLCache, owner: str | None = None
) -> QueueStatus:
    """The queue's counts, or a submitter's own (those cost a scan: kept a little longer)."""
    if owner is None:
        return cache.get("qs", 0.5, service.queue_status)
    return cache.get(f"qs:{owner}", OWNER_COUNTS_TTL, lambda: service.queue_status(owner))


def nav(
    service: ConveyorService, cache: TTLCache | None = None, owner: str | None = None
) -> QueueStatus:
    return queue_status(service, cache or TTLCache(), owner)


def fingerprint(task: Task) -> str:
    """Changes whenever anything the task page shows about the task changes."""
    return hashlib.sha1(task.model_dump_json().encode(), usedforsecurity=False).hexdigest()[:16]


def task_log(service: ConveyorService, task_id: str) -> dict[str, Any]:
    """The log as the page opens: the first pages of it, and where live lines resume."""
    lines = []
    after = 0
    truncated = False
    for _ in range(LOG_PAGES_SHOWN):
        page = service.logs(task_id, after_seq=after, limit=LOG_PAGE)
        lines.extend(page)
        if len(page) < LOG_PAGE:
            break
        after = page[-1].seq
    else:
        truncated = True
    return {
        "lines": lines,
        "prev_attempt": 0,
        "last_seq": lines[-1].seq if lines else 0,
        "log_truncated": truncated,
    }
