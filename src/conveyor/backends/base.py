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
  ``Attempt`` in ``history`` and issues a fresh lease token. With
  ``max_gpus`` set, only tasks whose ``gpus`` is at most ``max_gpus`` are
  claimed (the worker passes the GPUs it has free); the others stay
  ``pending``, untouched, for a worker that has them.
* ``heartbeat`` renews, in one call, every lease the worker still holds
  (``renewed``), reports those it lost (``lost``: expired and reaped,
  cancelled, or owned by another attempt) and the tasks whose cancel was
  requested (``cancel``). It also records the worker's ``WorkerInfo``.
* ``progress``, ``complete``, ``fail`` and ``release`` raise ``LeaseLost``
  when the lease token is not the task's current one (fencing).
* ``complete`` is idempotent for its lease: called again with the lease that
  completed the task and the same outputs (its first answer was lost with a
  connection), it returns the completed task unchanged instead of ``LeaseLost``.
  The outputs it names may be staged (``OutputFile.staged_key``);
  ``outputs_committed`` clears those once ``conveyor.outputs`` made them
  visible at their final keys (a no-op on a
  task that is not completed or has nothing staged).
* ``fail(retryable=True)`` puts the task back to ``pending`` with
  ``not_before = now + backoff(attempts)`` while ``attempts < max_attempts``;
  otherwise (or with ``retryable=False``) the task becomes ``failed`` with
  the error. A task whose cancel was requested becomes ``cancelled`` instead.
* ``release`` hands a task back without counting the attempt (graceful
  worker shutdown, or an attempt an infrastructure outage stopped): ``pending``,
  ``attempts`` decremented, ``not_before = now + delay_s`` when ``delay_s > 0``;
  the attempt is recorded ``released`` with ``error`` (None on a shutdown).
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

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from conveyor.auth.store import AuthStore
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


def completed_by(
    status: str,
    token: str | None,
    lease: Lease,
    stored: list[OutputFile],
    outputs: list[OutputFile],
) -> bool:
    """Whether a task in ``status`` holding ``token`` and ``stored`` outputs is what
    completing it under ``lease`` with ``outputs`` made (a repeat of that call)."""

    def names(files: list[OutputFile]) -> list[tuple[str, str, str, int]]:
        return [(o.name, o.bucket, o.key, o.size) for o in files]

    return (
        status == "completed"
        and token is not None
        and token == lease.token
        and names(stored) == names(outputs)
    )


def committed_outputs_json(outputs: list[OutputFile]) -> str:
    """The outputs with their staged twins forgotten (they are at their final keys)."""
    return json.dumps(
        [o.model_copy(update={"staged_key": None}).model_dump(mode="json") for o in outputs]
    )


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


# Upper bounds (seconds) of the task duration and queue-wait histograms: a
# thumbnail takes a second, a long H.265 rendition or a training run hours.
DURATION_BUCKETS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    21600,
)


class HistogramData(BaseModel):
    """Cumulative counts per upper bound of ``DURATION_BUCKETS`` (``+Inf`` is ``count``)."""

    buckets: list[int]
    count: int = 0
    sum: float = 0.0


class MetricsSnapshot(BaseModel):
    """What ``/metrics`` reads from the engine at scrape time.

    Read from the shared engine rather than counted in one process, so every
    API process behind a load balancer reports the same numbers.
    """

    # kind -> status -> tasks; ``delayed`` is split out of ``pending``
    tasks: dict[str, dict[str, int]] = {}
    # completed tasks: finished_at - started_at (the attempt that completed)
    duration: dict[str, HistogramData] = {}
    # started tasks: started_at - created_at (time spent queued, back-offs included)
    queue_wait: dict[str, HistogramData] = {}
    # kind -> attempts beyond the first, over every task
    retries: dict[str, int] = {}
    # kind -> attempts that ended because the worker's lease expired
    lease_expiries: dict[str, int] = {}


def histogram_from_values(values: list[float]) -> HistogramData:
    values = [max(0.0, v) for v in values]
    return HistogramData(
        buckets=[sum(1 for v in values if v <= b) for b in DURATION_BUCKETS],
        count=len(values),
        sum=float(sum(values)),
    )


HISTOGRAM_COLUMNS = 2 + len(DURATION_BUCKETS)

# Only these rows can hold a lease expiry in their history: a task completed on
# its first attempt (most of a table) never lost a lease, so engines skip
# parsing its history.
MAY_HAVE_EXPIRED = "(attempts > 1 OR (attempts = 1 AND status IN ('pending', 'failed')))"


def histogram_select(expr: str, prefix: str = "h") -> str:
    """SQL select list ``count, sum, count per bucket`` of ``expr`` (SQLite and PostgreSQL).

    NULL values are not counted, so one pass can build several histograms
    from ``CASE`` expressions.
    """
    cols = [f"COUNT({expr})", f"COALESCE(SUM({expr}), 0)"]
    cols += [f"COUNT(*) FILTER (WHERE {expr} <= {b})" for b in DURATION_BUCKETS]
    # distinct names: dict rows would otherwise fold the unnamed columns into one
    return ", ".join(f"{c} AS {prefix}{i}" for i, c in enumerate(cols))


def histogram_from_row(row: Sequence[Any]) -> HistogramData:
    """Inverse of :func:`histogram_select` for the row's columns after the kind."""
    return HistogramData(count=int(row[0]), sum=float(row[1]), buckets=[int(v) for v in row[2:]])


def add_histogram(target: dict[str, HistogramData], kind: str, row: Sequence[Any]) -> None:
    """Add one group's :func:`histogram_select` columns to ``target[kind]``."""
    h = histogram_from_row(row)
    if h.count == 0:
        return
    old = target.get(kind)
    if old is not None:
        h = HistogramData(
            count=old.count + h.count,
            sum=old.sum + h.sum,
            buckets=[a + b for a, b in zip(old.buckets, h.buckets, strict=True)],
        )
    target[kind] = h


def add_snapshot_row(snap: MetricsSnapshot, row: Sequence[Any]) -> None:
    """One ``(kind, state, n, retries, expired, run histogram, wait histogram)`` group."""
    kind, state, n, retries, expired = str(row[0]), str(row[1]), row[2], row[3], row[4]
    snap.tasks.setdefault(kind, {})[state] = int(n)
    snap.retries[kind] = snap.retries.get(kind, 0) + int(retries or 0)
    snap.lease_expiries[kind] = snap.lease_expiries.get(kind, 0) + int(expired or 0)
    add_histogram(snap.duration, kind, row[5 : 5 + HISTOGRAM_COLUMNS])
    add_histogram(snap.queue_wait, kind, row[5 + HISTOGRAM_COLUMNS :])


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
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
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
    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task: ...

    @abstractmethod
    def outputs_committed(self, task_id: str) -> Task:
        """Record that a completed task's staged outputs are at their final keys."""

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

    def check_ready(self) -> None:
        """Raise if this process could not serve now: engine unreachable or schema not current.

        Engines override it with a check that does not wait on a connection
        pool, so that a readiness probe answers quickly while the database is down.
        """
        self.ping()

    def metrics_snapshot(self, max_rows: int = 100_000) -> MetricsSnapshot:
        """Counts and histograms for ``/metrics`` (see :class:`MetricsSnapshot`).

        This default pages through ``list`` (at most ``max_rows`` tasks per
        status, newest first), which is right for small tables; SQL engines
        replace it with one aggregate query.
        """
        snap = MetricsSnapshot()
        waits: dict[str, list[float]] = {}
        durations: dict[str, list[float]] = {}
        for status in TaskStatus:
            cursor: str | None = None
            seen = 0
            while seen < max_rows:
                page = self.list(status=status, limit=1000, cursor=cursor)
                seen += len(page.items)
                for t in page.items:
                    name = "delayed" if t.delayed else status.value
                    by = snap.tasks.setdefault(t.kind, {})
                    by[name] = by.get(name, 0) + 1
                    snap.retries[t.kind] = snap.retries.get(t.kind, 0) + max(0, t.attempts - 1)
                    expired = sum(1 for a in t.history if a.outcome == "lease_expired")
                    snap.lease_expiries[t.kind] = snap.lease_expiries.get(t.kind, 0) + expired
                    if t.started_at is not None:
                        wait = (t.started_at - t.created_at).total_seconds()
                        waits.setdefault(t.kind, []).append(wait)
                        if status == TaskStatus.COMPLETED and t.finished_at is not None:
                            run = (t.finished_at - t.started_at).total_seconds()
                            durations.setdefault(t.kind, []).append(run)
                cursor = page.next_cursor
                if cursor is None:
                    break
        snap.duration = {k: histogram_from_values(v) for k, v in durations.items()}
        snap.queue_wait = {k: histogram_from_values(v) for k, v in waits.items()}
        return snap

    def recent_completed(self, kind: str, limit: int = 20) -> list[Task]:
        """The latest completed tasks of ``kind``: their outputs feed speed gauges."""
        return self.list(status=TaskStatus.COMPLETED, kind=kind, limit=limit).items

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def auth_store(self) -> AuthStore:
        """Tokens, secrets, nonces and the audit log, kept in this backend's database."""
        store: AuthStore | None = getattr(self, "_auth_store", None)
        if store is None:
            store = self._open_auth_store()
            self._auth_store = store
        return store

    def _open_auth_store(self) -> AuthStore:
        raise NotImplementedError(f"{type(self).__name__} keeps no auth store")

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
