"""The backend contract: the task lifecycle, kept atomic by each engine.

It describes a lifecycle rather than a generic queue plus a generic table
because every engine keeps the transitions atomic in its own terms (a SQL
transaction, SQS + DynamoDB conditional writes).  The contract test suite in
``tests/contract`` pins the semantics below for every engine.

Semantics every engine implements:

* ``submit`` stores a new ``pending`` task. When ``idempotency_key`` is set
  and a task with that key exists, nothing is written and the existing task
  is returned with ``created=False``.
* ``claim`` leases up to ``capacity`` pending tasks whose ``not_before`` has
  passed and whose kind is in ``kinds``: highest ``priority`` first, oldest
  first within a priority. Claiming sets ``processing``, increments
  ``attempts``, sets ``worker_id`` and ``started_at``, records an
  ``Attempt`` in ``history`` and issues a fresh lease token.
* ``heartbeat`` renews, in one call, every lease the worker still holds
  (``renewed``), reports those it lost (``lost``: expired and reaped,
  cancelled, or owned by another attempt) and the tasks whose cancel was
  requested (``cancel``). It also records the worker's ``WorkerInfo``.
* ``progress``, ``complete``, ``fail`` and ``release`` raise ``LeaseLost``
  when the lease token is not the task's current one (fencing).
* ``fail(retryable=True)`` puts the task back to ``pending`` with
  ``not_before = now + backoff(attempts)`` while ``attempts < max_attempts``;
  otherwise (or with ``retryable=False``) the task becomes ``failed`` with
  the error. A task whose cancel was requested becomes ``cancelled`` instead.
* ``release`` hands a task back without counting the attempt (graceful
  worker shutdown): ``pending``, ``attempts`` decremented.
* ``reap`` treats every expired lease as a retryable failure
  (``lease expired``), or ``cancelled`` when a cancel was requested, and
  returns how many it touched. Safe to run from several places at once.
* ``cancel`` makes a pending task ``cancelled`` at once; for a processing
  task it sets ``cancel_requested`` (the worker kills it and reports back).
  Cancelling a final task raises ``Conflict``.
* ``retry`` puts a ``failed`` or ``cancelled`` task back to ``pending`` with
  ``attempts`` reset to 0 and error/outputs cleared (history kept);
  otherwise ``Conflict``.
* ``clear_pending`` cancels every pending task (delayed ones too) and
  returns how many.
* ``list`` returns newest first (``created_at`` then ``id``, descending),
  filtered by status and/or ``date_partition`` and/or kind and/or ``text``
  (a case-insensitive substring of the input key; ``%`` and ``_`` match
  themselves), with an opaque keyset cursor.
* ``throughput(since, bucket_s)`` counts tasks that finished ``completed``
  or ``failed`` at or after ``since``, per ``bucket_s``-second window
  starting at ``since``: one ``ThroughputPoint`` per window up to now, in
  order, windows without tasks included with zeros.  The default below is
  built on ``list``; engines override it with one aggregate query.
* ``wait_for_work`` blocks until new work may be available or the timeout
  passes; it may return early spuriously.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from conveyor.models import (
    ClaimedTask,
    HeartbeatResult,
    Lease,
    LogLine,
    OutputFile,
    Page,
    Progress,
    QueueCounts,
    Task,
    TaskStatus,
    WorkerInfo,
)

DEFAULT_BACKOFF_BASE_S = 5.0
DEFAULT_BACKOFF_MAX_S = 600.0


def backoff_seconds(
    attempts: int, base: float = DEFAULT_BACKOFF_BASE_S, cap: float = DEFAULT_BACKOFF_MAX_S
) -> float:
    """Exponential back-off after the ``attempts``-th failed attempt."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


class ThroughputPoint(BaseModel):
    """Tasks that finished in one window ``[start, start + bucket_s)``."""

    start: datetime
    completed: int = 0
    failed: int = 0


def throughput_windows(
    since: datetime, bucket_s: int, counts: dict[tuple[int, str], int], now: datetime | None = None
) -> list[ThroughputPoint]:
    """Every window from ``since`` to ``now``, filled from ``{(window, status): n}``."""
    now = now or datetime.now(UTC)
    n = max(1, int((now - since).total_seconds() // bucket_s) + 1)
    return [
        ThroughputPoint(
            start=since + timedelta(seconds=i * bucket_s),
            completed=counts.get((i, "completed"), 0),
            failed=counts.get((i, "failed"), 0),
        )
        for i in range(n)
    ]


class Backend(ABC):
    """One engine for tasks, queue, worker registry and task logs."""

    backoff_base: float = DEFAULT_BACKOFF_BASE_S
    backoff_max: float = DEFAULT_BACKOFF_MAX_S

    # -- submitting ---------------------------------------------------------
    @abstractmethod
    def submit(self, task: Task) -> tuple[Task, bool]:
        """Store ``task``; return it and whether it was created (idempotency)."""

    # -- worker protocol ----------------------------------------------------
    @abstractmethod
    def claim(
        self, worker_id: str, kinds: list[str], capacity: int, lease_s: float
    ) -> list[ClaimedTask]: ...

    @abstractmethod
    def heartbeat(
        self, worker: WorkerInfo, leases: list[Lease], lease_s: float
    ) -> HeartbeatResult: ...

    @abstractmethod
    def progress(self, lease: Lease, progress: Progress) -> None: ...

    @abstractmethod
    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task: ...

    @abstractmethod
    def fail(
        self, lease: Lease, error: str, *, retryable: bool, code: str | None = None
    ) -> Task: ...

    @abstractmethod
    def release(self, lease: Lease) -> Task: ...

    @abstractmethod
    def reap(self) -> int: ...

    # -- operator actions ---------------------------------------------------
    @abstractmethod
    def cancel(self, task_id: str) -> Task: ...

    @abstractmethod
    def retry(self, task_id: str) -> Task: ...

    @abstractmethod
    def clear_pending(self) -> int: ...

    # -- reading ------------------------------------------------------------
    @abstractmethod
    def get(self, task_id: str) -> Task | None: ...

    @abstractmethod
    def counts(self, today: str | None = None) -> QueueCounts: ...

    @abstractmethod
    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]: ...

    def throughput(self, since: datetime, bucket_s: int = 3600) -> list[ThroughputPoint]:
        """Completed/failed tasks per window since ``since`` (see the module docs).

        This default pages through ``list`` for the date partitions from the
        day before ``since`` to today, so it misses tasks created more than a
        day before ``since`` and stops counting after ``max_rows`` rows per
        status; engines replace it with one aggregate query.
        """
        max_rows = 200_000
        since = since.astimezone(UTC)
        counts: dict[tuple[int, str], int] = {}
        day = (since - timedelta(days=1)).date()
        today = datetime.now(UTC).date()
        days = []
        while day <= today:
            days.append(day.isoformat())
            day += timedelta(days=1)
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            seen = 0
            for d in days:
                cursor: str | None = None
                while seen < max_rows:
                    page = self.list(status=status, date=d, limit=1000, cursor=cursor)
                    seen += len(page.items)
                    for t in page.items:
                        if t.finished_at is not None and t.finished_at >= since:
                            i = int((t.finished_at - since).total_seconds() // bucket_s)
                            counts[(i, status.value)] = counts.get((i, status.value), 0) + 1
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        return throughput_windows(since, bucket_s, counts)

    # -- logs ---------------------------------------------------------------
    @abstractmethod
    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        """Append ``(ts, stream, line)`` entries to a task attempt's log."""

    @abstractmethod
    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]: ...

    # -- plumbing -----------------------------------------------------------
    @abstractmethod
    def wait_for_work(self, timeout: float) -> None: ...

    def ping(self) -> None:
        """Raise if the engine cannot be reached."""
        self.counts()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    def list(
        self,
        *,
        status: TaskStatus | None = None,
        date: str | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        text: str | None = None,
    ) -> Page: ...
