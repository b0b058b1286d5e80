"""The backend contract, as two interfaces: what a worker needs and what the service needs.

* ``WorkerQueue`` is the worker's half: claim tasks, renew leases, report
  progress and outcomes, ship log lines, reap expired leases, wait for work.
  That is all a worker needs, wherever it runs; the remote engine
  (``https://API``, ``conveyor.remote.queue``) implements only this half.
* ``TaskStore`` is the service's half: submit, read, list and count tasks,
  cancel / retry / clear them, read their logs, the worker registry, the
  numbers behind dashboards and ``/metrics``, recording published outputs,
  and the auth store kept beside the tasks.
* ``Backend`` is an engine: one class implementing both halves over one
  database (``sqlite/``, ``postgres/``, ``aws/``), each keeping the lifecycle
  atomic in its own terms (a SQL transaction; SQS + DynamoDB conditional
  writes).  The rules every engine applies the same way (how a failure ends
  an attempt, back-off, cancel and retry, idempotent completion) live once,
  in ``conveyor.backends.rules``; the list cursor in ``conveyor.backends.cursor``.

The contract test suite in ``tests/contract`` pins the semantics below for
every engine (the remote one included: its worker half over HTTP, its store
half on the engine the API serves).

Worker half (``WorkerQueue``):

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
  ``TaskStore.outputs_committed`` clears those once ``conveyor.outputs`` made
  them visible at their final keys.
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
* ``complete_many`` completes several attempts at once, each fenced by its own
  lease exactly as ``complete`` (idempotent alike); one lost lease fails that
  item only (its ``LeaseLost`` is in the answer, in the item's place).  Each
  item carries the attempt's last log lines, appended before its completion
  and only with it (in the same transaction where the engine has them), so the
  log is whole once the outcome shows; a repeated completion appends nothing.
  It answers what the worker needs (None for a completed item), not the rows.
* ``spawn_children(lease, children)`` makes the leased task a parent: fenced by
  its lease (``LeaseLost``, nothing inserted), it stores the children
  (``parent_id`` set, pending; ``rules.prepare_children``) and hands the parent
  back without counting the attempt (closed ``spawned``), ``children`` = their
  number, held (pending, ``not_before = CHILDREN_HOLD``: no claim takes it)
  until every child completed.  Called again with the same lease (its answer
  was lost) it inserts nothing and answers the parent alike.  Cascades, in the
  transaction of the change that causes them: the last child completed makes
  the parent claimable (its next run sees ``children > 0``); a child failed for
  good or cancelled fails the held parent (``child_failed``, the child and its
  error named) and so cancels its unfinished siblings; a parent failed or
  cancelled cancels its pending children and requests the cancel of its running
  ones; a retried parent starts over (``children`` 0, the old children no longer
  its own).  A parent whose cancel was requested is cancelled instead, nothing
  inserted.  ``TaskStore.children`` lists a parent's children, oldest first.
* ``append_logs`` appends ``(ts, stream, line)`` entries to an attempt's log.
* ``wait_for_work`` blocks until new work may be available or the timeout
  passes; it may return early spuriously.

Service half (``TaskStore``):

* ``submit`` stores a new ``pending`` task. When ``idempotency_key`` is set
  and a task with that key exists, nothing is written and the existing task
  is returned with ``created=False``.  ``submit_many`` does the same for a list,
  answering in order (the SQL engines in one transaction).
* ``outputs_committed`` records that a completed task's staged outputs are at
  their final keys (a no-op on a task that is not completed or has nothing
  staged).
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
  themselves) and/or ``external_id`` (exactly; indexed), with an opaque keyset cursor.
* ``throughput(since, bucket_s)`` counts tasks that finished ``completed``
  or ``failed`` at or after ``since``, per ``bucket_s``-second window
  starting at ``since``: one ``ThroughputPoint`` per window up to now, in
  order, windows without tasks included with zeros.  The default below is
  built on ``list``; engines override it with one aggregate query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from conveyor.auth.store import AuthStore
from conveyor.backends.rules import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S
from conveyor.errors import LeaseLost
from conveyor.metrics_data import (
    MetricsSnapshot,
    ThroughputPoint,
    histogram_from_values,
    throughput_windows,
)
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

__all__ = [
    "Backend",
    "Completion",
    "Connected",
    "MetricsSnapshot",  # re-exported: the store's answers
    "TaskStore",
    "ThroughputPoint",
    "WorkerQueue",
]


class Connected(ABC):
    """What both halves have: a connection to check and to close."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the engine cannot be reached."""

    def check_ready(self) -> None:
        """Raise if this process could not serve now: engine unreachable or schema not current.

        Engines override it with a check that does not wait on a connection
        pool, so that a readiness probe answers quickly while the database is down.
        """
        self.ping()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


LogEntry = tuple[datetime, str, str]  # (ts, stream, line)
_COMPLETING = Progress(percent=100.0, phase="completing")


@dataclass(frozen=True)
class Completion:
    """One attempt to complete in ``WorkerQueue.complete_many``: its lease, its outputs,
    and the log lines to append before the completion (and only with it)."""

    lease: Lease
    outputs: list[OutputFile]
    logs: list[LogEntry] = field(default_factory=list)


class WorkerQueue(Connected):
    """The worker's half of the contract (see the module docs)."""

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

    def complete_many(self, items: list[Completion]) -> list[BaseException | None]:
        """Complete each item under its own lease; per item None (completed, or completed
        before with that lease) or the exception that refused it (``LeaseLost``).  An
        error that concerns the whole call (the engine unreachable) is raised.

        This default goes item by item: a fenced progress write checks that the lease
        is held, then the logs are shipped and the task completed.  A lease found lost
        ships nothing and the completion decides (a repeat of a completion whose answer
        was lost is answered alike; any other is refused).  The SQL engines do the whole
        batch in one transaction."""
        out: list[BaseException | None] = []
        for item in items:
            try:
                if item.logs:
                    try:
                        self.progress(item.lease, _COMPLETING)
                    except LeaseLost:
                        pass  # completed already by this lease, or lost: complete() says
                    else:
                        self.append_logs(item.lease.task_id, item.lease.attempt, item.logs)
                        item.logs.clear()  # shipped: a retry of this call sends them once
                self.complete(item.lease, item.outputs)
            except LeaseLost as exc:
                out.append(exc)
            else:
                out.append(None)
        return out

    @abstractmethod
    def fail(
        self, lease: Lease, error: str, *, retryable: bool, code: str | None = None
    ) -> Task: ...

    @abstractmethod
    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task: ...

    @abstractmethod
    def reap(self) -> int: ...

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        """Store ``children`` under the leased task and hold it until they all completed
        (see the module docs); returns the held parent."""
        raise NotImplementedError(f"{type(self).__name__} cannot spawn children")

    def spawned(self, lease: Lease) -> list[Task]:
        """The children of the leased task, oldest first: its run after them reads their
        outputs.  Engines answer ``TaskStore.children``; the remote one asks the API."""
        raise NotImplementedError(f"{type(self).__name__} cannot read children")

    @abstractmethod
    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        """Append ``(ts, stream, line)`` entries to a task attempt's log."""

    @abstractmethod
    def wait_for_work(self, timeout: float) -> None: ...


class TaskStore(Connected):
    """The service's half of the contract (see the module docs)."""

    @abstractmethod
    def submit(self, task: Task) -> tuple[Task, bool]:
        """Store ``task``; return it and whether it was created (idempotency)."""

    def submit_many(self, tasks: list[Task]) -> list[tuple[Task, bool]]:
        """``submit`` for each task, in order; the SQL engines store them in one
        transaction."""
        return [self.submit(t) for t in tasks]

    @abstractmethod
    def get(self, task_id: str) -> Task | None: ...

    @abstractmethod
    def counts(self, today: str | None = None) -> QueueCounts: ...

    @abstractmethod
    def cancel(self, task_id: str) -> Task: ...

    @abstractmethod
    def retry(self, task_id: str) -> Task: ...

    @abstractmethod
    def clear_pending(self) -> int: ...

    @abstractmethod
    def outputs_committed(self, task_id: str) -> Task:
        """Record that a completed task's staged outputs are at their final keys."""

    def children(self, task_id: str) -> list[Task]:
        """The children of ``task_id`` (its ``spawn_children``), oldest first."""
        return []

    @abstractmethod
    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]: ...

    @abstractmethod
    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]: ...

    def ping(self) -> None:
        """Raise if the engine cannot be reached."""
        self.counts()

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
                    name = (
                        "waiting_for_children"
                        if t.waiting_for_children
                        else "delayed"
                        if t.delayed
                        else status.value
                    )
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

    def auth_store(self) -> AuthStore:
        """Tokens, secrets, nonces and the audit log, kept in this engine's database."""
        store: AuthStore | None = getattr(self, "_auth_store", None)
        if store is None:
            store = self._open_auth_store()
            self._auth_store = store
        return store

    def _open_auth_store(self) -> AuthStore:
        raise NotImplementedError(f"{type(self).__name__} keeps no auth store")

    # last: a method named ``list`` would shadow the builtin in the annotations below it
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
        external_id: str | None = None,
    ) -> Page: ...


class Backend(WorkerQueue, TaskStore):
    """An engine: both halves over one database (tasks, queue, workers, logs, auth).

    ``backoff_base`` / ``backoff_max`` shape the delay before a failed attempt's
    retry (``rules.backoff_seconds``); the service sets the base from its settings.
    """

    backoff_base: float = DEFAULT_BACKOFF_BASE_S
    backoff_max: float = DEFAULT_BACKOFF_MAX_S

    def spawned(self, lease: Lease) -> list[Task]:
        return self.children(lease.task_id)
