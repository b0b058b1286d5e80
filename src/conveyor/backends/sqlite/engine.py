"""The SQLite engine's tasks: queue, workers and logs, in WAL mode.

One writer connection per process, guarded by a lock, with ``BEGIN
IMMEDIATE`` so that two processes sharing the file queue up on the write
lock instead of failing half-way ("database is locked" is what Unmanic users
hit).  Readers use their own per-thread connections and never block the
writer.  Times are stored as UNIX seconds (REAL) so comparisons are cheap.

Durability: ``synchronous=NORMAL`` by default (a commit survives the process,
and a power cut keeps the file consistent but may lose the last commits);
``sqlite:///path?synchronous=full`` syncs the WAL at every commit (huey's
default), which costs one fsync per transaction: workers batch claims and
completions so that one transaction serves several tasks.

Waking idle workers: a worker in this process waits on a condition that every
commit making work claimable notifies; a worker in another process on this host
binds a Unix datagram socket in ``<database>.wake/`` while it waits, and the same
commits send one empty datagram to every socket there (a dead worker's socket
refuses it and is removed).  So a separate ``conveyor worker`` starts a task
within milliseconds of its submit; the poll interval is only the fallback (a
filesystem that cannot hold sockets, another host sharing the file).

Writers of several processes: each takes an exclusive ``flock`` on
``<database>.lock`` around its transaction (``host_lock``: woken by the kernel the
moment the lock is free, not by SQLite's busy handler; not held up for ever by a
stopped process).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from conveyor.auth.store import AuthStore
from conveyor.backends import rules
from conveyor.backends.base import Backend, Completion
from conveyor.backends.cursor import decode_cursor, encode_cursor
from conveyor.backends.sql import (
    COLUMNS,
    MAY_HAVE_EXPIRED,
    N_COLUMNS,
    add_snapshot_row,
    histogram_select,
    key_pattern,
    task_from_row,
)
from conveyor.backends.sqlite import schema
from conveyor.backends.sqlite.host_lock import HostLock
from conveyor.errors import InvalidRequest, LeaseLost, TaskNotFound
from conveyor.metrics_data import MetricsSnapshot, ThroughputPoint, throughput_windows
from conveyor.models import (
    Attempt,
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


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _iso(ts: float) -> str:
    """A time as the history's JSON holds it (pydantic's form of a UTC datetime)."""
    return _at(ts).isoformat().replace("+00:00", "Z")


log = logging.getLogger("conveyor.backends.sqlite")

SYNCHRONOUS = ("normal", "full", "extra")
_STARTING = Progress(phase="starting").model_dump_json()
_COMPLETED = Progress(percent=100.0, phase="completed").model_dump_json()
# the attempt a claim opens, and the one a completion closes (SQLite's JSON functions:
# the history is never parsed in Python on the hot path)
_OPEN_ATTEMPT = (
    "json_insert(history, '$[#]', json_object('number', attempts + 1, 'worker_id', ?, "
    "'started_at', ?, 'finished_at', NULL, 'outcome', NULL, 'error', NULL))"
)
_CLOSE_COMPLETED = (
    "CASE WHEN json_array_length(history) > 0 AND json_extract(history, '$[#-1].finished_at') "
    "IS NULL THEN json_set(history, '$[#-1].finished_at', ?, '$[#-1].outcome', 'completed', "
    "'$[#-1].error', NULL) ELSE history END"
)


class WakeSockets:
    """Cross-process wake-ups on one host: a folder of Unix datagram sockets, one per
    waiting backend instance; a commit that makes work claimable pings them all.

    Addresses go through ``/proc/self/fd/<folder fd>/<name>`` where that exists, so a
    long data directory does not meet the 108-byte limit of a socket path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sock: socket.socket | None = None
        self._name: str | None = None
        self._dirfd: int | None = None
        self._peers: list[str] = []
        self._peers_read = 0.0
        self._lock = threading.Lock()

    def _address(self, name: str) -> str:
        if self._dirfd is None:
            with contextlib.suppress(OSError):
                self.folder.mkdir(mode=0o700, exist_ok=True)
                self._dirfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        proc = f"/proc/self/fd/{self._dirfd}"
        if self._dirfd is not None and os.path.isdir(proc):
            return f"{proc}/{name}"
        return str(self.folder / name)

    def listen(self) -> socket.socket | None:
        """This instance's socket (bound on first use), or None where sockets cannot be."""
        with self._lock:
            if self._sock is not None:
                return self._sock
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(self._address(name))
            except OSError as exc:
                sock.close()
                log.debug("no wake socket in %s (%s): idle workers poll", self.folder, exc)
                return None
            sock.setblocking(False)
            self._sock, self._name = sock, name
            self._peers_read = 0.0  # list again: this socket joined
            return sock

    def ping(self) -> None:
        """One empty datagram to every waiting instance (this one's too: its listener
        sleeps in the socket, not on the condition); never blocks."""
        now = time.monotonic()
        with self._lock:
            if now - self._peers_read > 1.0:
                # re-listed at most once a second: an instance lists its peers anew after it
                # binds, and a new waiter claims once after binding before it sleeps
                try:
                    self._peers = [n for n in os.listdir(self.folder) if n.endswith(".sock")]
                except OSError:
                    self._peers = []
                self._peers_read = now
            peers = list(self._peers)
        if not peers:
            return
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        try:
            for name in peers:
                try:
                    sender.sendto(b"", self._address(name))
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups waiting already
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # its owner is gone
                        with contextlib.suppress(OSError):
                            os.unlink(self.folder / name)
                        with self._lock:
                            self._peers_read = 0.0
        finally:
            sender.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / str(self._name))
                self._sock = None
            if self._dirfd is not None:
                os.close(self._dirfd)
                self._dirfd = None


# how long a writer waits for another process's transaction before it leaves the
# ordering to SQLite (see ``host_lock``); opening a file waits longer, as a schema
# upgrade by another process may take a while
HOST_LOCK_WAIT_S = 2.0
FIRST_OPEN_WAIT_S = 120.0


class SQLiteBackend(Backend):
    def __init__(
        self,
        path: Path | str,
        *,
        backoff_base: float | None = None,
        synchronous: str = "normal",
    ) -> None:
        self.path = str(path)
        if synchronous.lower() not in SYNCHRONOUS:
            raise InvalidRequest(
                f"sqlite synchronous={synchronous!r}: expected one of {', '.join(SYNCHRONOUS)}"
            )
        self.synchronous = synchronous.upper()
        self._wake: WakeSockets | None = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._wake = WakeSockets(Path(self.path + ".wake"))
        if backoff_base is not None:
            self.backoff_base = backoff_base
        self._listen_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._host_lock = HostLock(self.path)
        self._local = threading.local()
        self._work = threading.Condition()
        self._generation = 0  # bumped on every notify; see wait_for_work
        self._closed = False
        # under the host's writers' lock: processes that open a new file together would
        # each switch it to WAL, and SQLite answers "database is locked" to all but one
        # of them without waiting (two workers started together: one exited at start)
        with self._write_lock, self._host_locked(FIRST_OPEN_WAIT_S):
            self._writer = self._connect()
            # a new file gets the schema, one an older Conveyor wrote the versions it lacks
            schema.upgrade(self._writer)

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc:  # sqlite://relative/path.db
            path = parsed.netloc + path
        if not path:
            raise InvalidRequest("sqlite URL needs a file path, e.g. sqlite:///data/conveyor.db")
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return cls(path, synchronous=q.get("synchronous", "normal"))

    # -- connections ---------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        # the parent/child cascades (migration 0006) are triggers whose updates must fire
        # the events triggers already running for their cause
        conn.execute("PRAGMA recursive_triggers=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, under this host's writers' lock (``host_lock``);
        ``busy_timeout`` still covers other writers."""
        with self._write_lock, self._host_locked():
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            else:
                c.execute("COMMIT")

    @contextmanager
    def _host_locked(self, wait_s: float | None = None) -> Iterator[None]:
        """The writers' lock of this host (see ``host_lock``), waited for ``wait_s``
        (``HOST_LOCK_WAIT_S``, read at each call) at most."""
        held = self._host_lock.acquire(HOST_LOCK_WAIT_S if wait_s is None else wait_s)
        try:
            yield
        finally:
            if held:
                self._host_lock.release()

    def _notify(self) -> None:
        """Work may be claimable: wake waiters in this process and on this host."""
        self._wake_local()
        if self._wake is not None:
            try:
                self._wake.ping()
            except Exception:  # a wake-up is an optimisation: the waiters still poll
                log.debug("could not wake other processes", exc_info=True)

    def _wake_local(self) -> None:
        with self._work:
            self._generation += 1
            self._work.notify_all()

    # -- row mapping -------------------------------------------------------
    @staticmethod
    def _row_to_task(r: sqlite3.Row) -> Task:
        return task_from_row(r, json_value=_json, time_value=_dt)

    def _get_row(self, c: sqlite3.Connection, task_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = c.execute(
            f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return row

    def _require(self, c: sqlite3.Connection, task_id: str) -> sqlite3.Row:
        row = self._get_row(c, task_id)
        if row is None:
            raise TaskNotFound(f"task {task_id} not found")
        return row

    def _held(self, c: sqlite3.Connection, lease: Lease) -> sqlite3.Row:
        row = self._get_row(c, lease.task_id)
        if (
            row is None
            or row["status"] != TaskStatus.PROCESSING
            or row["lease_token"] != lease.token
        ):
            raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")
        return row

    @staticmethod
    def _close_attempt(history_json: str, outcome: str, error: str | None, now: float) -> str:
        history = [Attempt.model_validate(a) for a in json.loads(history_json)]
        closed = rules.close_attempt(history, outcome, error, _at(now))
        return json.dumps([a.model_dump(mode="json") for a in closed])

    # -- submit --------------------------------------------------------------
    def submit(self, task: Task) -> tuple[Task, bool]:
        with self._tx() as c:
            stored, created = self._insert(c, task)
        if created:
            self._notify()
        return stored, created

    def _insert(self, c: sqlite3.Connection, task: Task) -> tuple[Task, bool]:
        if task.status != TaskStatus.PENDING:
            task = task.model_copy(update={"status": TaskStatus.PENDING})
        if task.idempotency_key:
            existing = c.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?",
                (task.idempotency_key,),
            ).fetchone()
            if existing is not None:
                return self._row_to_task(existing), False
        c.execute(
            f"INSERT INTO tasks ({COLUMNS}) VALUES ({', '.join('?' * N_COLUMNS)})",
            (
                task.id,
                task.kind,
                task.status.value,
                task.priority,
                task.input.bucket if task.input else None,
                task.input.key if task.input else None,
                json.dumps(task.params),
                json.dumps([o.model_dump(mode="json") for o in task.outputs]),
                task.progress.model_dump_json(),
                task.attempts,
                task.max_attempts,
                task.error,
                task.error_code,
                None,
                None,
                None,
                0,
                _ts(task.created_at),
                _ts(task.updated_at),
                None,
                None,
                _ts(task.not_before),
                task.date_partition,
                task.idempotency_key,
                task.submitted_by,
                task.trigger.value,
                "[]",
                task.gpus,
                task.external_id,
                json.dumps(task.metadata) if task.metadata else None,
                task.parent_id,
                task.children,
            ),
        )
        return task, True

    def submit_many(self, tasks: list[Task]) -> list[tuple[Task, bool]]:
        """Several submits in one transaction (one commit); idempotency as ``submit``."""
        out: list[tuple[Task, bool]] = []
        with self._tx() as c:
            for task in tasks:
                out.append(self._insert(c, task))
        if any(created for _, created in out):
            self._notify()
        return out

    # -- worker protocol -----------------------------------------------------
    def claim(
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
    ) -> list[ClaimedTask]:
        """Walk ``tasks_ready`` in claim order; ``not_before``, ``kind`` and ``gpus``
        are columns of that index, so rows passed over are never read from the table
        (``tests/contract`` checks the plan)."""
        if capacity <= 0 or not kinds:
            return []
        sql, args = self._claim_query(kinds, capacity, max_gpus)
        rows: list[tuple[str, sqlite3.Row]] = []
        # the rows are read into models after the commit: the writers' lock is held only
        # for the statements
        with self._tx() as c:
            now = time.time()
            ids = [r[0] for r in c.execute(sql, args).fetchall()]
            for task_id in ids:
                token = secrets.token_hex(16)
                # one statement per task: the attempt is opened in the history by SQLite's
                # JSON functions, and the row comes back for the worker (RETURNING)
                row = c.execute(
                    "UPDATE tasks SET status = 'processing', attempts = attempts + 1, "
                    "worker_id = ?, lease_token = ?, lease_expires = ?, started_at = ?, "
                    "updated_at = ?, not_before = NULL, progress = ?, "
                    f"history = {_OPEN_ATTEMPT} WHERE id = ? RETURNING {COLUMNS}",
                    (
                        worker_id,
                        token,
                        now + lease_s,
                        now,
                        now,
                        _STARTING,
                        worker_id,
                        _iso(now),
                        task_id,
                    ),
                ).fetchone()
                rows.append((token, row))
        claimed: list[ClaimedTask] = []
        for token, row in rows:
            claimed.append(
                ClaimedTask(
                    task=self._row_to_task(row),
                    lease=Lease(
                        task_id=row["id"],
                        token=token,
                        worker_id=worker_id,
                        attempt=row["attempts"],
                        expires_at=_at(now + lease_s),
                    ),  # type: ignore[arg-type]
                )
            )
        return claimed

    @staticmethod
    def _claim_query(
        kinds: list[str], capacity: int, max_gpus: int | None
    ) -> tuple[str, tuple[Any, ...]]:
        marks = ", ".join("?" * len(kinds))
        gpus = "" if max_gpus is None else "AND gpus <= ? "
        sql = (
            "SELECT id FROM tasks INDEXED BY tasks_ready "
            f"WHERE status = 'pending' AND kind IN ({marks}) "
            f"AND (not_before IS NULL OR not_before <= ?) {gpus}"
            "ORDER BY priority DESC, id LIMIT ?"
        )
        extra = () if max_gpus is None else (max_gpus,)
        return sql, (*kinds, time.time(), *extra, capacity)

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        now = time.time()
        result = HeartbeatResult()
        worker = worker.model_copy(update={"last_seen": _at(now)})
        with self._tx() as c:
            c.execute(
                "INSERT INTO workers (id, info, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET info = excluded.info, "
                "last_seen = excluded.last_seen",
                (worker.id, worker.model_dump_json(), now),
            )
            for lease in leases:
                cur = c.execute(
                    "UPDATE tasks SET lease_expires = ? WHERE id = ? AND status = 'processing' "
                    "AND lease_token = ? RETURNING cancel_requested",
                    (now + lease_s, lease.task_id, lease.token),
                ).fetchone()
                if cur is None:
                    result.lost.append(lease.task_id)
                else:
                    result.renewed.append(lease.task_id)
                    if cur[0]:
                        result.cancel.append(lease.task_id)
        return result

    def progress(self, lease: Lease, progress: Progress) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE tasks SET progress = ?, updated_at = ? WHERE id = ? "
                "AND status = 'processing' AND lease_token = ?",
                (progress.model_dump_json(), time.time(), lease.task_id, lease.token),
            )
            if cur.rowcount == 0:
                raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")

    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task:
        self._local.child_done = False
        with self._tx() as c:
            done = self._complete_row(c, lease, outputs, [], time.time())
            if done is not None:
                raise done
            task = self._row_to_task(self._require(c, lease.task_id))
        if self._local.child_done:  # its parent may be claimable now (0006's trigger)
            self._notify()
        return task

    def complete_many(self, items: list[Completion]) -> list[BaseException | None]:
        """The whole batch in one transaction (one commit, one fsync with
        ``synchronous=full``), each item fenced by its own lease."""
        if not items:
            return []
        self._local.child_done = False
        with self._tx() as c:
            now = time.time()
            out: list[BaseException | None] = [
                self._complete_row(c, i.lease, i.outputs, i.logs, now) for i in items
            ]
        if self._local.child_done:  # a parent may be claimable now (0006's trigger)
            self._notify()
        return out

    def _complete_row(
        self,
        c: sqlite3.Connection,
        lease: Lease,
        outputs: list[OutputFile],
        logs: list[tuple[datetime, str, str]],
        now: float,
    ) -> LeaseLost | None:
        """Complete one attempt inside the caller's transaction; None, or why not.

        The lease token stays on the completed row: a repeated call (its answer was
        lost with a connection) is recognised and answered the same, and appends no
        log line twice (its lines came with the first)."""
        cur = c.execute(
            "UPDATE tasks SET status = 'completed', outputs = ?, progress = ?, error = NULL, "
            "error_code = NULL, lease_expires = NULL, finished_at = ?, updated_at = ?, "
            f"history = {_CLOSE_COMPLETED} "
            "WHERE id = ? AND status = 'processing' AND lease_token = ? RETURNING parent_id",
            (
                json.dumps([o.model_dump(mode="json") for o in outputs]),
                _COMPLETED,
                now,
                now,
                _iso(now),
                lease.task_id,
                lease.token,
            ),
        )
        done = cur.fetchone()
        if done is not None:
            if done[0] is not None:
                self._local.child_done = True
            if logs:
                c.executemany(
                    "INSERT INTO task_logs (task_id, attempt, ts, stream, line) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (lease.task_id, lease.attempt, ts.timestamp(), stream, line)
                        for ts, stream, line in logs
                    ],
                )
            return None
        if self._completed_by(c, lease, outputs) is not None:
            return None
        return LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")

    def _completed_by(
        self, c: sqlite3.Connection, lease: Lease, outputs: list[OutputFile]
    ) -> Task | None:
        row = self._get_row(c, lease.task_id)
        if row is None or row["status"] != TaskStatus.COMPLETED:
            return None
        task = self._row_to_task(row)
        if rules.completed_by(task.status, row["lease_token"], lease, task.outputs, outputs):
            return task
        return None

    def outputs_committed(self, task_id: str) -> Task:
        with self._tx() as c:
            row = self._require(c, task_id)
            outputs = [OutputFile.model_validate(o) for o in json.loads(row["outputs"])]
            if row["status"] == TaskStatus.COMPLETED and any(o.staged_key for o in outputs):
                c.execute(
                    "UPDATE tasks SET outputs = ? WHERE id = ? AND status = 'completed'",
                    (rules.committed_outputs_json(outputs), task_id),
                )
                row = self._require(c, task_id)
            return self._row_to_task(row)

    def _fail_row(
        self,
        c: sqlite3.Connection,
        row: sqlite3.Row,
        error: str,
        *,
        retryable: bool,
        code: str | None,
        outcome: str,
        now: float,
    ) -> None:
        end = rules.end_attempt(
            cancel_requested=bool(row["cancel_requested"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            error=error,
            retryable=retryable,
            code=code,
            outcome=outcome,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
        )
        c.execute(
            "UPDATE tasks SET status = ?, error = ?, error_code = ?, lease_token = NULL, "
            "lease_expires = NULL, not_before = ?, updated_at = ?, finished_at = ?, history = ? "
            "WHERE id = ?",
            (
                end.status.value,
                end.error,
                end.code,
                None if end.retry_in_s is None else now + end.retry_in_s,
                now,
                now if end.final else None,
                self._close_attempt(row["history"], end.outcome, end.error, now),
                row["id"],
            ),
        )

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        now = time.time()
        with self._tx() as c:
            row = self._held(c, lease)
            self._fail_row(
                c, row, error, retryable=retryable, code=code or "failed", outcome="failed", now=now
            )
            task = self._row_to_task(self._require(c, lease.task_id))
        if task.status == TaskStatus.PENDING:
            self._notify()
        return task

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        now = time.time()
        with self._tx() as c:
            row = self._held(c, lease)
            if row["cancel_requested"]:
                self._fail_row(
                    c,
                    row,
                    "cancelled",
                    retryable=False,
                    code="cancelled",
                    outcome="cancelled",
                    now=now,
                )
            else:
                c.execute(
                    "UPDATE tasks SET status = 'pending', attempts = MAX(attempts - 1, 0), "
                    "lease_token = NULL, lease_expires = NULL, worker_id = NULL, updated_at = ?, "
                    "not_before = ?, progress = ?, history = ? WHERE id = ?",
                    (
                        now,
                        now + delay_s if delay_s > 0 else None,
                        Progress().model_dump_json(),
                        self._close_attempt(row["history"], "released", error, now),
                        lease.task_id,
                    ),
                )
            task = self._row_to_task(self._require(c, lease.task_id))
        self._notify()
        return task

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        """Fenced by the parent's lease; the children and the held parent in one
        transaction (the cascades are 0006's triggers)."""
        now = time.time()
        with self._tx() as c:
            row = self._get_row(c, lease.task_id)
            if row is not None and rules.spawn_repeat(
                row["status"], row["lease_token"], row["children"], lease
            ):
                return self._row_to_task(row)
            row = self._held(c, lease)
            if row["cancel_requested"]:
                self._fail_row(
                    c,
                    row,
                    "cancelled",
                    retryable=False,
                    code="cancelled",
                    outcome="cancelled",
                    now=now,
                )
                return self._row_to_task(self._require(c, lease.task_id))
            parent = self._row_to_task(row)
            stored = rules.prepare_children(parent, children)
            for child in stored:
                self._insert(c, child)
            # the token stays on the held row: a repeated call is recognised
            c.execute(
                "UPDATE tasks SET status = 'pending', attempts = MAX(attempts - 1, 0), "
                "children = ?, lease_expires = NULL, worker_id = NULL, not_before = ?, "
                "updated_at = ?, progress = ?, history = ? WHERE id = ?",
                (
                    len(stored),
                    _ts(rules.CHILDREN_HOLD),
                    now,
                    rules.held_progress(len(stored)),
                    self._close_attempt(row["history"], rules.SPAWNED, None, now),
                    lease.task_id,
                ),
            )
            task = self._row_to_task(self._require(c, lease.task_id))
        self._notify()
        return task

    def children(self, task_id: str) -> list[Task]:
        rows = (
            self._reader()
            .execute(
                f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_parent WHERE parent_id = ? "
                "ORDER BY id",
                (task_id,),
            )
            .fetchall()
        )
        return [self._row_to_task(r) for r in rows]

    def reap(self) -> int:
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE status = 'processing' AND lease_expires < ?",
                (now,),
            ).fetchall()
            for row in rows:
                self._fail_row(
                    c,
                    row,
                    rules.lease_expired_error(row["worker_id"]),
                    retryable=True,
                    code=rules.LEASE_EXPIRED_CODE,
                    outcome=rules.LEASE_EXPIRED_CODE,
                    now=now,
                )
        if rows:
            self._notify()
        return len(rows)

    # -- operator actions ----------------------------------------------------
    def cancel(self, task_id: str) -> Task:
        now = time.time()
        with self._tx() as c:
            row = self._require(c, task_id)
            if rules.cancel_action(task_id, TaskStatus(row["status"])) == "cancel":
                c.execute(
                    "UPDATE tasks SET status = 'cancelled', error = ?, error_code = ?, "
                    "not_before = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                    (rules.CANCELLED_BY_REQUEST, rules.CANCELLED_CODE, now, now, task_id),
                )
            else:
                c.execute(
                    "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now, task_id),
                )
            return self._row_to_task(self._require(c, task_id))

    def retry(self, task_id: str) -> Task:
        now = time.time()
        with self._tx() as c:
            row = self._require(c, task_id)
            rules.check_retry(task_id, TaskStatus(row["status"]))
            c.execute(
                "UPDATE tasks SET status = 'pending', attempts = 0, error = NULL, "
                "error_code = NULL, "
                "outputs = '[]', progress = ?, cancel_requested = 0, not_before = NULL, "
                "finished_at = NULL, worker_id = NULL, updated_at = ? WHERE id = ?",
                (Progress().model_dump_json(), now, task_id),
            )
            task = self._row_to_task(self._require(c, task_id))
        self._notify()
        return task

    def clear_pending(self) -> int:
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE tasks SET status = 'cancelled', error = ?, error_code = ?, "
                "not_before = NULL, finished_at = ?, updated_at = ? WHERE status = 'pending'",
                (rules.QUEUE_CLEARED, rules.CANCELLED_CODE, now, now),
            )
            return cur.rowcount

    # -- reading -------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        row = self._get_row(self._reader(), task_id)
        return None if row is None else self._row_to_task(row)

    def counts(self, today: str | None = None) -> QueueCounts:
        now = time.time()
        day = today or date_partition(utcnow())
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        lo, hi = start.timestamp(), (start + timedelta(days=1)).timestamp()
        c = self._reader()
        out = QueueCounts()
        hold = _ts(rules.CHILDREN_HOLD)
        ready = c.execute(
            "SELECT COUNT(*) FILTER (WHERE not_before IS NULL OR not_before <= ?), "
            "COUNT(*) FILTER (WHERE not_before > ? AND not_before < ?), "
            "COUNT(*) FILTER (WHERE not_before >= ?) FROM tasks INDEXED BY tasks_ready "
            "WHERE status = 'pending'",
            (now, now, hold, hold),
        ).fetchone()
        out.pending, out.delayed, out.waiting_for_children = (int(n) for n in ready)
        out.processing = int(
            c.execute("SELECT COUNT(*) FROM tasks WHERE status = 'processing'").fetchone()[0]
        )
        for status, attr in (
            ("completed", "completed_today"),
            ("failed", "failed_today"),
            ("cancelled", "cancelled_today"),
        ):
            n = c.execute(
                "SELECT COUNT(*) FROM tasks INDEXED BY tasks_finished WHERE status = ? "
                "AND finished_at >= ? AND finished_at < ?",
                (status, lo, hi),
            ).fetchone()[0]
            setattr(out, attr, int(n))
        out.by_status = out.by_status_counts()
        return out

    def throughput(self, since: datetime, bucket_s: int = 3600) -> list[ThroughputPoint]:
        """One aggregate over the ``(status, finished_at)`` index (covering: no table reads)."""
        lo = since.timestamp()
        rows = (
            self._reader()
            .execute(
                "SELECT CAST((finished_at - ?) / ? AS INTEGER), status, COUNT(*) "
                "FROM tasks INDEXED BY tasks_finished "
                "WHERE status IN ('completed', 'failed') AND finished_at >= ? "
                "GROUP BY 1, 2",
                (lo, max(1, int(bucket_s)), lo),
            )
            .fetchall()
        )
        counts = {(int(r[0]), str(r[1])): int(r[2]) for r in rows}
        return throughput_windows(since, bucket_s, counts)

    def metrics_snapshot(self, max_rows: int = 100_000) -> MetricsSnapshot:
        """One pass over the table: counts, retries, expiries and both histograms."""
        snap = MetricsSnapshot()
        rows = self._reader().execute(
            "SELECT kind, st, COUNT(*), SUM(MAX(attempts - 1, 0)), SUM(CASE WHEN "
            f"{MAY_HAVE_EXPIRED} AND history LIKE '%lease_expired%' THEN (SELECT COUNT(*) "
            "FROM json_each(history) WHERE json_extract(value, '$.outcome') = 'lease_expired') "
            f"ELSE 0 END), {histogram_select('run', 'r')}, {histogram_select('wait', 'w')} "
            "FROM (SELECT kind, status, attempts, history, "
            "CASE WHEN status = 'pending' AND not_before >= ? THEN 'waiting_for_children' "
            "WHEN status = 'pending' AND not_before > ? THEN 'delayed' ELSE status END AS st, "
            "CASE WHEN status = 'completed' AND started_at IS NOT NULL "
            "THEN MAX(finished_at - started_at, 0) END AS run, "
            "CASE WHEN started_at IS NOT NULL THEN MAX(started_at - created_at, 0) END AS wait "
            "FROM tasks) GROUP BY kind, st",
            (_ts(rules.CHILDREN_HOLD), time.time()),
        )
        for row in rows.fetchall():
            add_snapshot_row(snap, tuple(row))
        return snap

    def check_ready(self) -> None:
        version = (
            self._reader().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        )
        if version is None or version[0] != schema.SCHEMA_VERSION:
            found = version[0] if version else "none"
            raise RuntimeError(f"schema version {found}, expected {schema.SCHEMA_VERSION}")

    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]:
        rows = (
            self._reader()
            .execute(
                "SELECT info FROM workers WHERE last_seen >= ? ORDER BY id",
                (time.time() - active_within_s,),
            )
            .fetchall()
        )
        return [WorkerInfo.model_validate_json(r[0]) for r in rows]

    # -- logs ----------------------------------------------------------------
    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        if not lines:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO task_logs (task_id, attempt, ts, stream, line) VALUES (?, ?, ?, ?, ?)",
                [(task_id, attempt, ts.timestamp(), stream, line) for ts, stream, line in lines],
            )

    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        sql = "SELECT seq, attempt, ts, stream, line FROM task_logs WHERE task_id = ? AND seq > ?"
        args: list[Any] = [task_id, after_seq]
        if attempt is not None:
            sql += " AND attempt = ?"
            args.append(attempt)
        sql += " ORDER BY seq LIMIT ?"
        args.append(max(1, min(limit, 10000)))
        return [
            LogLine(seq=r[0], attempt=r[1], ts=_at(r[2]), stream=r[3], line=r[4])  # type: ignore[arg-type]
            for r in self._reader().execute(sql, args).fetchall()
        ]

    # -- plumbing --------------------------------------------------------------
    def wait_for_work(self, timeout: float) -> None:
        """Wake at once on a submit in this process or, through the wake sockets, in
        another process on this host; poll otherwise (see the module docs).

        A submit that lands between a worker's empty claim and this call is not
        lost: each thread remembers the generation it last saw and returns at
        once when work was announced since; a datagram sent meanwhile waits in the
        socket.  The first call binds the socket and returns at once, so that the
        caller's next claim is made with the socket already listening.
        """
        timeout = max(0.0, float(timeout))
        with self._work:
            if getattr(self._local, "generation", 0) != self._generation:
                self._local.generation = self._generation
                return
        sock = None if self._wake is None or self._closed else self._wake.listen()
        if sock is None:
            self._wait_local(timeout)
            return
        if not getattr(self._local, "listening", False):
            self._local.listening = True
            return  # bound just now: claim once more before sleeping
        if not self._listen_lock.acquire(blocking=False):
            self._wait_local(timeout)  # another thread listens and relays to us
            return
        try:
            if getattr(self._local, "generation", 0) != self._generation:
                self._local.generation = self._generation
                return
            import select

            got, _, _ = select.select([sock], [], [], timeout)
            if got:
                with contextlib.suppress(OSError):
                    while True:  # drain: one wake-up is enough
                        sock.recv(16)
                self._wake_local()
        finally:
            self._listen_lock.release()
        with self._work:
            self._local.generation = self._generation

    def _wait_local(self, timeout: float) -> None:
        with self._work:
            if getattr(self._local, "generation", 0) == self._generation:
                self._work.wait(timeout)
            self._local.generation = self._generation

    def _open_auth_store(self) -> AuthStore:
        from conveyor.backends.sqlite.auth import SQLiteAuthStore

        return SQLiteAuthStore(Path(self.path))

    def close(self) -> None:
        self._closed = True
        store = getattr(self, "_auth_store", None)
        if store is not None:
            store.close()
        self._wake_local()
        if self._wake is not None:
            self._wake.close()
        with self._write_lock:
            self._writer.close()
            self._host_lock.close()  # closed: no writer takes it again
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

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
        index = "tasks_created"
        if date is not None:
            where.append("date_partition = ?")
            args.append(date)
            index = "tasks_date"
        if status is not None:
            where.append("status = ?")
            args.append(TaskStatus(status).value)
            index = "tasks_status" if date is None else "tasks_date_status"
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
            if date is None and status is None:
                index = "tasks_kind"
        if text:
            # a substring of the key (LIKE ignores ASCII case); the index above keeps
            # the newest-first walk, this only filters the rows it passes
            where.append("input_key LIKE ? ESCAPE '\\'")
            args.append(key_pattern(text))
        if external_id is not None:
            where.append("external_id = ?")
            args.append(external_id)
            index = "tasks_external"
        if cursor:
            created_at, tid = decode_cursor(cursor)
            where.append("(created_at, id) < (?, ?)")
            args.extend([created_at.timestamp(), tid])
        sql = f"SELECT {COLUMNS} FROM tasks INDEXED BY {index}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._reader().execute(sql, args).fetchall()
        items = [self._row_to_task(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(_at(last["created_at"]), last["id"])
        return Page(items=items, next_cursor=next_cursor)
