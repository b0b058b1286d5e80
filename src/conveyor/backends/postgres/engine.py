"""The PostgreSQL engine's tasks: many hosts, one database, every transition one short statement.

The fixed statements are in ``queries.sql`` (loaded by ``queries.py``); the URL's
options are described in ``url.py``, the schema and its versions in ``schema.py``.

How the contract maps onto PostgreSQL:

* Every worker-facing call is one statement in autocommit mode, hence its
  own short transaction (``claim`` and ``complete_many`` send theirs with BEGIN and
  COMMIT in one round trip): ``claim`` is ``UPDATE … FROM (SELECT … FOR UPDATE
  SKIP LOCKED)`` over the partial index of pending work, per kind, so
  concurrent workers on any number of hosts never wait for each other nor
  get the same task; ``heartbeat`` renews all of a worker's leases and
  upserts its ``workers`` row in one statement.
* Durability: every commit waits for its WAL to be on disk (synchronous_commit on,
  as the server has it) except a claim's: a claim lost in a crash returns its task to
  the queue, and fencing refuses the worker that ran it; the completion's own
  synchronous commit flushes the claim before it (``claim_commit_async``).
* Fencing: ``progress``/``complete``/``fail``/``release`` update the row
  only ``WHERE status = 'processing' AND lease_token = <token>``; no row
  means ``LeaseLost``.
* Times (leases, back-offs, "now") come from the database clock, so hosts
  with skewed clocks agree on when a lease has expired.
* ``reap`` runs under ``pg_try_advisory_xact_lock``: with a reaper on every
  host, one of them does the work and the others return at once; the rows
  are locked ``SKIP LOCKED`` and re-checked, so a lease renewed meanwhile is
  left alone and no attempt is ever counted twice.
* Whatever makes work claimable (submit, release, retry, a failure or reap
  that re-queues) sends ``NOTIFY conveyor_work`` in the same transaction;
  ``wait_for_work`` LISTENs on a dedicated connection, so an idle worker
  wakes within milliseconds.  A missed notification costs one poll
  interval, never the task.
* A backend refuses to start on a schema it does not know (newer than this
  code) or that is not upgraded yet (unless ``auto_upgrade``): ``schema.py``.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from conveyor.auth.store import AuthStore
from conveyor.backends import rules
from conveyor.backends.base import Backend, Completion
from conveyor.backends.cursor import decode_cursor, encode_cursor
from conveyor.backends.postgres import schema
from conveyor.backends.postgres.queries import QUERIES
from conveyor.backends.postgres.url import parse_url, threshold, truthy
from conveyor.backends.sql import COLUMNS, add_snapshot_row, key_pattern, task_from_row
from conveyor.errors import Conflict, InvalidRequest, LeaseLost, TaskNotFound
from conveyor.metrics_data import MetricsSnapshot, ThroughputPoint, throughput_windows
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
    date_partition,
    utcnow,
)

# advisory lock keys (the single-bigint key space); "CONVEY" + a number
# (0x434F4E5645590001 is schema.MIGRATE_LOCK)
REAPER_LOCK = 0x434F4E5645590002
# two-int key space: (LOG_LOCK_CLASS, hashtext(task_id)) serialises one task's log appends
LOG_LOCK_CLASS = 0x434F4E56

Row = dict[str, Any]
Cursor = psycopg.Cursor[Row]

_T_COLUMNS = ", ".join(f"t.{c}" for c in COLUMNS.split(", "))

# -- the claim: built per number of kinds ---------------------------------------------
# One branch per kind, each reading the top of that kind from the partial index
# tasks_ready (kind, priority DESC, id, gpus) and locking what it reads (SKIP LOCKED:
# rows other workers are claiming are passed over, never waited for); the merge
# keeps the best ``capacity`` of them.  Each branch locks at most ``capacity``
# rows, so a multi-kind claim may hold a few rows it does not take until its
# statement ends (microseconds); a single full-queue scan instead would read
# through every pending task of kinds this worker cannot run.  ``{gpus}`` is
# ``AND gpus <= %(max_gpus)s`` when the worker says how many GPUs it has free:
# gpus is a key column of tasks_ready, so it is an index condition checked on
# each index entry, and tasks needing more GPUs cost no heap read (the test
# reads the plan).
_GPU_FILTER = " AND gpus <= %(max_gpus)s"
_CLAIM_BRANCH = (
    "SELECT * FROM (SELECT id, priority FROM tasks"
    " WHERE status = 'pending' AND kind = %(kind{i})s{gpus}"
    " AND (not_before IS NULL OR not_before <= now())"
    " ORDER BY priority DESC, id LIMIT %(capacity)s FOR UPDATE SKIP LOCKED) AS k{i}"
)
_CLAIM_UPDATE = (
    "UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1, "
    "worker_id = %(worker)s, lease_token = replace(gen_random_uuid()::text, '-', ''), "
    "lease_expires = now() + make_interval(secs => %(lease_s)s::float8), "
    "started_at = now(), updated_at = now(), not_before = NULL, progress = %(progress)s, "
    "history = t.history || jsonb_build_array(jsonb_build_object("
    "'number', t.attempts + 1, 'worker_id', %(worker)s::text, 'started_at', now(), "
    "'finished_at', NULL, 'outcome', NULL, 'error', NULL)) "
    f"FROM picked WHERE t.id = picked.id RETURNING {_T_COLUMNS}"
)
# Beyond this many kinds, one scan of the queue in priority order instead.
_CLAIM_MAX_BRANCHES = 16
_CLAIM_SCAN = (
    "WITH picked AS ("
    " SELECT id FROM tasks"
    " WHERE status = 'pending' AND kind = ANY(%(kinds)s::text[]){gpus}"
    " AND (not_before IS NULL OR not_before <= now())"
    " ORDER BY priority DESC, id LIMIT %(capacity)s FOR UPDATE SKIP LOCKED) " + _CLAIM_UPDATE
)


def _claim_sql(n_kinds: int, gpu_filter: bool = False) -> str:
    gpus = _GPU_FILTER if gpu_filter else ""
    if n_kinds > _CLAIM_MAX_BRANCHES:
        return _CLAIM_SCAN.format(gpus=gpus)
    branches = " UNION ALL ".join(_CLAIM_BRANCH.format(i=i, gpus=gpus) for i in range(n_kinds))
    return (
        f"WITH picked AS (SELECT id FROM ({branches}) AS c "
        "ORDER BY priority DESC, id LIMIT %(capacity)s) " + _CLAIM_UPDATE
    )


_COMPLETED = Progress(percent=100.0, phase="completed").model_dump(mode="json")


def _lease_lost(task_id: str) -> LeaseLost:
    return LeaseLost(f"lease on task {task_id} is no longer held by this worker")


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check at checkout, without a round trip while the server is quiet.

    An idle connection in autocommit receives nothing unless the server ends it (a
    restart sends AdminShutdown and closes the socket) or sends a notice: only then,
    when its socket has something to read, is the full check (an empty query) made, so
    a connection a restart closed is still replaced at checkout.  A connection lost
    silently (no FIN) fails on first use as an infrastructure error, which the callers
    retry."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        readable = [True]
    if readable:
        ConnectionPool.check_connection(conn)


def _same(value: Any) -> Any:
    return value


# -- the engine ---------------------------------------------------------------------
class PostgresBackend(Backend):
    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 8,
        pool_timeout: float = 30.0,
        auto_upgrade: bool = False,
        backoff_base: float | None = None,
        prepare_threshold: int | None = 5,
    ) -> None:
        self.conninfo, _ = parse_url(url)
        if backoff_base is not None:
            self.backoff_base = backoff_base
        self._work = threading.Condition()
        self._listen_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._closed = False
        # checked on a connection of its own first: an unreachable database or
        # an unknown schema fails here at once, not after the pool's timeout
        self._check_schema(auto_upgrade)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.conninfo,
            min_size=max(1, pool_min),
            max_size=max(1, pool_min, pool_max),
            kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
            configure=_configure,
            # a connection a server restart closed is replaced at checkout, not
            # handed to a caller to fail on first use (AdminShutdown)
            check=_check,
            timeout=pool_timeout,
            name="conveyor",
            num_workers=2,
            open=True,
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        _, opts = parse_url(url)
        try:
            return cls(
                url,
                pool_min=int(opts.get("pool_min", 1)),
                pool_max=int(opts.get("pool_max", 8)),
                pool_timeout=float(opts.get("pool_timeout", 30.0)),
                auto_upgrade=truthy(opts.get("auto_upgrade")),
                prepare_threshold=threshold(opts.get("prepare_threshold", "5")),
            )
        except ValueError as exc:
            raise InvalidRequest(f"invalid option in the PostgreSQL URL: {exc}") from None

    def _check_schema(self, auto_upgrade: bool) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            current = schema.schema_version(conn)
        schema.check(current, auto_upgrade=auto_upgrade, url=self.conninfo)

    def _open_auth_store(self) -> AuthStore:
        from conveyor.backends.postgres.auth import PostgresAuthStore

        return PostgresAuthStore(self._pool)

    # -- connections ---------------------------------------------------------------
    @contextmanager
    def _cursor(self) -> Iterator[Cursor]:
        """One statement per call: autocommit makes each its own transaction."""
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            yield cur

    def _wake_local(self) -> None:
        with self._work:
            self._work.notify_all()

    # -- row mapping -------------------------------------------------------------------
    @staticmethod
    def _row_to_task(r: Row) -> Task:
        return task_from_row(r, json_value=_same, time_value=_same)

    @staticmethod
    def _get_row(cur: Cursor, task_id: str, *, lock: bool = False) -> Row | None:
        return cur.execute(QUERIES["get_for_update" if lock else "get"], (task_id,)).fetchone()

    # -- submit ------------------------------------------------------------------------
    @staticmethod
    def _submit_values(task: Task) -> tuple[Any, ...]:
        return (
            task.id,
            task.kind,
            task.status.value,
            task.priority,
            task.input.bucket if task.input else None,
            task.input.key if task.input else None,
            Jsonb(task.params),
            Jsonb([o.model_dump(mode="json") for o in task.outputs]),
            Jsonb(task.progress.model_dump(mode="json")),
            task.attempts,
            task.max_attempts,
            task.error,
            task.error_code,
            None,
            None,
            None,
            False,
            task.created_at,
            task.updated_at,
            None,
            None,
            task.not_before,
            task.date_partition,
            task.idempotency_key,
            task.submitted_by,
            task.trigger.value,
            Jsonb([]),
            task.gpus,
            task.external_id,
            Jsonb(task.metadata) if task.metadata else None,
            task.parent_id,
            task.children,
        )

    @staticmethod
    def _pending(task: Task) -> Task:
        if task.status != TaskStatus.PENDING:
            return task.model_copy(update={"status": TaskStatus.PENDING})
        return task

    def submit(self, task: Task) -> tuple[Task, bool]:
        task = self._pending(task)
        values = self._submit_values(task)
        with self._cursor() as cur:
            for _ in range(3):
                try:
                    inserted = cur.execute(QUERIES["submit"], values).fetchone()
                except psycopg.errors.UniqueViolation:
                    raise Conflict(f"task {task.id} already exists") from None
                if inserted is not None:
                    break
                existing = cur.execute(
                    QUERIES["get_by_idempotency_key"], (task.idempotency_key,)
                ).fetchone()
                if existing is not None:
                    return self._row_to_task(existing), False
            else:  # pragma: no cover - the conflicting row vanished three times
                raise Conflict(f"could not store task {task.id}: idempotency key keeps changing")
        self._wake_local()
        return task, True

    def submit_many(self, tasks: list[Task]) -> list[tuple[Task, bool]]:
        """Several submits in one transaction (pipelined: one round trip, one commit);
        a task whose idempotency key is taken answers the existing task, as ``submit``."""
        tasks = [self._pending(t) for t in tasks]
        if not tasks:
            return []
        inserted: list[bool] = []
        with self._tx() as cur:
            try:
                cur.executemany(
                    QUERIES["submit"], [self._submit_values(t) for t in tasks], returning=True
                )
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"a task of this batch already exists: {exc}") from None
            while True:
                inserted.append(cur.fetchone() is not None)
                if not cur.nextset():
                    break
        out: list[tuple[Task, bool]] = []
        for task, created in zip(tasks, inserted, strict=True):
            if created:
                out.append((task, True))
                continue
            with self._cursor() as cur:
                existing = cur.execute(
                    QUERIES["get_by_idempotency_key"], (task.idempotency_key,)
                ).fetchone()
            if existing is None:  # pragma: no cover - the conflicting row vanished
                raise Conflict(f"could not store task {task.id}: idempotency key keeps changing")
            out.append((self._row_to_task(existing), False))
        if any(created for _, created in out):
            self._wake_local()
        return out

    # -- worker protocol ---------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
    ) -> list[ClaimedTask]:
        if capacity <= 0 or not kinds:
            return []
        unique = list(dict.fromkeys(kinds))
        params: dict[str, Any] = {
            "max_gpus": max_gpus,
            "kinds": unique,
            "capacity": capacity,
            "worker": worker_id,
            "lease_s": float(lease_s),
            "progress": Jsonb(Progress(phase="starting").model_dump(mode="json")),
        }
        params.update({f"kind{i}": k for i, k in enumerate(unique)})
        # one round trip: BEGIN, the commit mode (claim_commit_async: a claim lost in a
        # crash only returns the task to the queue), the claim, COMMIT
        with self._pool.connection() as conn, conn.pipeline():
            with conn.transaction():
                conn.execute(QUERIES["claim_commit_async"])
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(_claim_sql(len(unique), max_gpus is not None), params)
            rows = cur.fetchall()
        rows.sort(key=lambda r: (-r["priority"], r["id"]))
        return [
            ClaimedTask(
                task=self._row_to_task(r),
                lease=Lease(
                    task_id=r["id"],
                    token=r["lease_token"],
                    worker_id=worker_id,
                    attempt=r["attempts"],
                    expires_at=r["lease_expires"],
                ),
            )
            for r in rows
        ]

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        with self._cursor() as cur:
            rows = cur.execute(
                QUERIES["heartbeat"],
                {
                    "id": worker.id,
                    "info": worker.model_dump_json(),
                    "lease_s": float(lease_s),
                    "ids": [lease.task_id for lease in leases],
                    "tokens": [lease.token for lease in leases],
                },
            ).fetchall()
        held = {r["id"]: bool(r["cancel_requested"]) for r in rows}
        result = HeartbeatResult()
        for lease in leases:
            if lease.task_id in held:
                result.renewed.append(lease.task_id)
                if held[lease.task_id]:
                    result.cancel.append(lease.task_id)
            else:
                result.lost.append(lease.task_id)
        return result

    def progress(self, lease: Lease, progress: Progress) -> None:
        with self._cursor() as cur:
            cur.execute(
                QUERIES["progress"],
                (Jsonb(progress.model_dump(mode="json")), lease.task_id, lease.token),
            )
            if cur.rowcount == 0:
                raise _lease_lost(lease.task_id)

    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task:
        with self._cursor() as cur:
            row = cur.execute(
                QUERIES["complete"],
                {
                    "outputs": Jsonb([o.model_dump(mode="json") for o in outputs]),
                    "progress": Jsonb(
                        Progress(percent=100.0, phase="completed").model_dump(mode="json")
                    ),
                    "id": lease.task_id,
                    "token": lease.token,
                },
            ).fetchone()
        if row is None:
            # the same lease completed it before (the answer was lost on the way): done
            with self._cursor() as cur:
                again = self._get_row(cur, lease.task_id)
            if again is None or not rules.completed_by(
                again["status"],
                again["lease_token"],
                lease,
                self._row_to_task(again).outputs,
                outputs,
            ):
                raise _lease_lost(lease.task_id)
            row = again
        return self._row_to_task(row)

    def complete_many(self, items: list[Completion]) -> list[BaseException | None]:
        """The batch in one transaction: the log locks of its tasks, then one statement
        that completes every row whose lease holds and appends those rows' log lines.
        Pipelined: BEGIN, the locks, the statement and COMMIT go in one round trip."""
        if not items:
            return []
        ids = [i.lease.task_id for i in items]
        log_rows = [(i.lease.task_id, i.lease.attempt, *entry) for i in items for entry in i.logs]
        params = {
            "ids": ids,
            "tokens": [i.lease.token for i in items],
            "outputs": [Jsonb([o.model_dump(mode="json") for o in i.outputs]) for i in items],
            "progress": Jsonb(_COMPLETED),
            "log_ids": [r[0] for r in log_rows],
            "log_attempts": [r[1] for r in log_rows],
            "log_ts": [r[2] for r in log_rows],
            "log_streams": [r[3] for r in log_rows],
            "log_lines": [r[4] for r in log_rows],
        }
        with self._pool.connection() as conn, conn.pipeline():
            with conn.transaction():
                conn.execute(QUERIES["log_locks"], {"class": LOG_LOCK_CLASS, "ids": ids})
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(QUERIES["complete_many"], params)
            done = {r["id"] for r in cur.fetchall()}
        out: list[BaseException | None] = []
        for item in items:
            if item.lease.task_id in done or self._completed_before(item.lease, item.outputs):
                out.append(None)
            else:
                out.append(_lease_lost(item.lease.task_id))
        return out

    def _completed_before(self, lease: Lease, outputs: list[OutputFile]) -> bool:
        """Whether the same lease completed the task already (the answer was lost)."""
        with self._cursor() as cur:
            again = self._get_row(cur, lease.task_id)
        return again is not None and rules.completed_by(
            again["status"], again["lease_token"], lease, self._row_to_task(again).outputs, outputs
        )

    def outputs_committed(self, task_id: str) -> Task:
        with self._tx() as cur:
            row = self._get_row(cur, task_id, lock=True)
            if row is None:
                raise TaskNotFound(f"task {task_id} not found")
            task = self._row_to_task(row)
            if task.status != TaskStatus.COMPLETED or not any(o.staged_key for o in task.outputs):
                return task
            cur.execute(
                QUERIES["outputs_committed"],
                (rules.committed_outputs_json(task.outputs), task_id),
            )
            row = self._get_row(cur, task_id)
        assert row is not None
        return self._row_to_task(row)

    def _backoff_params(self) -> dict[str, float]:
        return {"backoff_base": float(self.backoff_base), "backoff_max": float(self.backoff_max)}

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        with self._cursor() as cur:
            row = cur.execute(
                QUERIES["fail"],
                {
                    "retryable": bool(retryable),
                    "error": error,
                    "code": code or "failed",
                    "id": lease.task_id,
                    "token": lease.token,
                    **self._backoff_params(),
                },
            ).fetchone()
        if row is None:
            raise _lease_lost(lease.task_id)
        task = self._row_to_task(row)
        if task.status == TaskStatus.PENDING:
            self._wake_local()
        return task

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        with self._cursor() as cur:
            row = cur.execute(
                QUERIES["release"],
                {
                    "delay_s": float(max(0.0, delay_s)),
                    "error": error,
                    "progress": Jsonb(Progress().model_dump(mode="json")),
                    "id": lease.task_id,
                    "token": lease.token,
                },
            ).fetchone()
        if row is None:
            raise _lease_lost(lease.task_id)
        self._wake_local()
        return self._row_to_task(row)

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        """One transaction: the parent locked and fenced, the children inserted (their
        submit wakes idle workers), the parent held (0006's triggers do the cascades)."""
        with self._tx() as cur:
            row = self._get_row(cur, lease.task_id, lock=True)
            if row is not None and rules.spawn_repeat(
                row["status"], row["lease_token"], row["children"], lease
            ):
                return self._row_to_task(row)
            if row is None or row["status"] != "processing" or row["lease_token"] != lease.token:
                raise _lease_lost(lease.task_id)
            if row["cancel_requested"]:
                done = cur.execute(
                    QUERIES["fail"],
                    {
                        "id": lease.task_id,
                        "token": lease.token,
                        "error": "cancelled",
                        "retryable": False,
                        "code": "cancelled",
                        **self._backoff_params(),
                    },
                ).fetchone()
                assert done is not None  # the row is locked and held by this lease
                return self._row_to_task(done)
            stored = rules.prepare_children(self._row_to_task(row), children)
            cur.executemany(QUERIES["submit"], [self._submit_values(t) for t in stored])
            held = cur.execute(
                QUERIES["hold_parent"],
                {
                    "children": len(stored),
                    "hold": rules.CHILDREN_HOLD,
                    "progress": rules.held_progress(len(stored)),
                    "id": lease.task_id,
                    "token": lease.token,
                },
            ).fetchone()
            assert held is not None  # the row is locked and held by this lease
        self._wake_local()
        return self._row_to_task(held)

    def children(self, task_id: str) -> list[Task]:
        with self._cursor() as cur:
            rows = cur.execute(QUERIES["children"], (task_id,)).fetchall()
        return [self._row_to_task(r) for r in rows]

    def reap(self) -> int:
        with self._tx() as cur:
            got = cur.execute(QUERIES["reaper_lock"], (REAPER_LOCK,))
            row = got.fetchone()
            if row is None or not row["got"]:
                return 0  # another reaper (another host) is at it right now
            rows = cur.execute(QUERIES["reap"], self._backoff_params()).fetchall()
            if any(r["status"] == TaskStatus.PENDING for r in rows):
                cur.execute(QUERIES["notify"])
        if rows:
            self._wake_local()
        return len(rows)

    # -- operator actions --------------------------------------------------------------
    def cancel(self, task_id: str) -> Task:
        with self._tx() as cur:
            row = self._get_row(cur, task_id, lock=True)
            if row is None:
                raise TaskNotFound(f"task {task_id} not found")
            action = rules.cancel_action(task_id, TaskStatus(row["status"]))
            query = QUERIES["cancel_pending" if action == "cancel" else "request_cancel"]
            row = cur.execute(query, (task_id,)).fetchone()
        assert row is not None
        return self._row_to_task(row)

    def retry(self, task_id: str) -> Task:
        with self._tx() as cur:
            row = self._get_row(cur, task_id, lock=True)
            if row is None:
                raise TaskNotFound(f"task {task_id} not found")
            rules.check_retry(task_id, TaskStatus(row["status"]))
            row = cur.execute(
                QUERIES["retry"], (Jsonb(Progress().model_dump(mode="json")), task_id)
            ).fetchone()
            cur.execute(QUERIES["notify"])
        assert row is not None
        self._wake_local()
        return self._row_to_task(row)

    def clear_pending(self) -> int:
        with self._cursor() as cur:
            cur.execute(QUERIES["clear_pending"])
            return cur.rowcount

    # -- reading -----------------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        with self._cursor() as cur:
            row = self._get_row(cur, task_id)
        return None if row is None else self._row_to_task(row)

    def counts(self, today: str | None = None) -> QueueCounts:
        day = today or date_partition(utcnow())
        try:
            lo = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidRequest(f"invalid day {day!r}: expected YYYY-MM-DD") from None
        with self._cursor() as cur:
            row = cur.execute(
                QUERIES["counts"], {"lo": lo, "hi": lo + timedelta(days=1)}
            ).fetchone()
        assert row is not None
        out = QueueCounts(**{k: int(v) for k, v in row.items()})
        out.by_status = out.by_status_counts()
        return out

    def throughput(self, since: datetime, bucket_s: int = 3600) -> list[ThroughputPoint]:
        """One aggregate over the ``(status, finished_at)`` index."""
        with self._cursor() as cur:
            rows = cur.execute(
                QUERIES["throughput"], (since, max(1, int(bucket_s)), since)
            ).fetchall()
        counts = {(int(r["w"]), str(r["status"])): int(r["n"]) for r in rows}
        return throughput_windows(since, bucket_s, counts)

    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]:
        with self._cursor() as cur:
            rows = cur.execute(QUERIES["workers"], (float(active_within_s),)).fetchall()
        return [WorkerInfo.model_validate(r["info"]) for r in rows]

    def ping(self) -> None:
        with self._cursor() as cur:
            cur.execute(QUERIES["ping"])

    def check_ready(self) -> None:
        """A connection of its own, not the pool's: it fails in seconds, not ``pool_timeout``."""
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=3) as conn:
            current = schema.schema_version(conn)
        schema.check(current)

    def metrics_snapshot(self, max_rows: int = 100_000) -> MetricsSnapshot:
        """One pass over the table: counts, retries, expiries and both histograms."""
        snap = MetricsSnapshot()
        with self._cursor() as cur:
            rows = cur.execute(QUERIES["metrics_snapshot"]).fetchall()
        for r in rows:
            add_snapshot_row(snap, list(r.values()))
        return snap

    # -- logs --------------------------------------------------------------------------
    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        if not lines:
            return
        with self._tx() as cur:
            # one appender per task at a time: seq order is commit order, so a
            # reader tailing with after_seq never skips a line committed late
            cur.execute(QUERIES["log_lock"], (LOG_LOCK_CLASS, task_id))
            cur.execute(
                QUERIES["append_logs"],
                (
                    task_id,
                    attempt,
                    [ts for ts, _, _ in lines],
                    [stream for _, stream, _ in lines],
                    [line for _, _, line in lines],
                ),
            )

    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        args: dict[str, Any] = {
            "task_id": task_id,
            "after": after_seq,
            "limit": max(1, min(limit, 10000)),
        }
        if attempt is not None:
            args["attempt"] = attempt
        query = QUERIES["read_logs" if attempt is None else "read_attempt_logs"]
        with self._cursor() as cur:
            rows = cur.execute(query, args).fetchall()
        return [
            LogLine(
                seq=r["seq"], attempt=r["attempt"], ts=r["ts"], stream=r["stream"], line=r["line"]
            )
            for r in rows
        ]

    # -- plumbing ----------------------------------------------------------------------
    def _listen_connection(self) -> psycopg.Connection[Any] | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            # bounded connect, and TCP keepalives so a silently dropped link is
            # noticed (meanwhile every wait still ends by its timeout: polling)
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
            conn.execute(QUERIES["listen"])
        except psycopg.Error:
            return None
        self._listener = conn
        return conn

    def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def wait_for_work(self, timeout: float) -> None:
        """Block until a NOTIFY (or a local submit) says there may be work, or ``timeout``.

        One thread at a time listens on the dedicated connection and relays
        what it hears to the others; if that connection breaks it is dropped
        (and made again on the next call) and the caller simply polls.
        """
        timeout = max(0.0, float(timeout))
        if self._closed:
            return
        if not self._listen_lock.acquire(blocking=False):
            with self._work:  # another thread is listening and will wake us
                self._work.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            conn = self._listen_connection()
            if conn is None:  # database unreachable: behave like a poll
                with self._work:
                    self._work.wait(max(0.0, deadline - time.monotonic()))
                return
            woke = False
            try:
                remaining = max(0.0, deadline - time.monotonic())
                for _ in conn.notifies(timeout=remaining, stop_after=1):
                    woke = True
                if woke:  # drain what else has arrived: one wake-up is enough
                    for _ in conn.notifies(timeout=0):
                        pass
            except psycopg.Error:
                self._drop_listener()
                return
            if woke:
                self._wake_local()
        finally:
            if self._closed:
                self._drop_listener()
            self._listen_lock.release()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_local()
        if self._listen_lock.acquire(blocking=False):
            try:
                self._drop_listener()
            finally:
                self._listen_lock.release()
        self._pool.close()

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
    ) -> Page:
        limit = max(1, min(int(limit), 1000))
        where: list[str] = []
        args: list[Any] = []
        if date is not None:
            where.append("date_partition = %s")
            args.append(date)
        if status is not None:
            where.append("status = %s")
            args.append(TaskStatus(status).value)
        if kind is not None:
            where.append("kind = %s")
            args.append(kind)
        if text:  # substring of the key, case-insensitive, as on SQLite
            where.append("input_key ILIKE %s")
            args.append(key_pattern(text))
        if external_id is not None:
            where.append("external_id = %s")
            args.append(external_id)
        if cursor:
            created_at, task_id = decode_cursor(cursor)
            where.append("(created_at, id) < (%s, %s)")
            args.extend([created_at, task_id])
        sql = f"SELECT {COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        args.append(limit + 1)
        with self._cursor() as cur:
            rows = cur.execute(sql, args).fetchall()
        items = [self._row_to_task(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last["created_at"], last["id"])
        return Page(items=items, next_cursor=next_cursor)
