"""The remote worker engines under the contract suites, against a real API.

The ``https://`` backend engine implements only the worker's half of the
contract (claim, heartbeat, progress, complete, fail, release, logs, waiting
for work); the suite also submits, cancels, lists and reaps.  ``SplitBackend``
sends the worker half over HTTP to a real API (uvicorn on 127.0.0.1 over
SQLite) and the operator half straight to the engine object that API serves,
so every fencing, lease and back-off rule is checked through the HTTP path.
"""

from __future__ import annotations

import atexit
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor.api.routes_worker import stop_work_signal
from conveyor.backends.base import Backend
from conveyor.backends.sqlite import SQLiteBackend
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
from conveyor.remote.connection import ApiConnection
from conveyor.remote.queue import RemoteQueue
from conveyor.remote.storage import RemoteBlobStore
from conveyor.storage.base import BlobStore
from conveyor.storage.local import LocalBlobStore
from tests.apiserver import ApiServer, start_api

_shared: ApiServer | None = None
_shared_lock = threading.Lock()


def shared_api() -> ApiServer:
    """One API for the whole run (starting one per test would dominate the suite's time).

    Each test swaps in a fresh engine and a fresh bucket folder
    (:func:`fresh_backend`, :func:`fresh_storage`), so tests share nothing
    but the HTTP server.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_api(Path(tempfile.mkdtemp(prefix="conveyor-remote-api-")))
            atexit.register(_shared.stop)
        return _shared


def fresh_backend(workdir: Path) -> SQLiteBackend:
    api = shared_api()
    old = api.service.backend
    stop_work_signal(api.app.state)  # bound to the old engine
    api.app.state.work_signal = None
    api.service.backend = SQLiteBackend(workdir / "conveyor.db")
    old.close()
    return api.service.backend  # type: ignore[return-value]


def fresh_storage(workdir: Path, s3: bool = False) -> BlobStore:
    """A local bucket folder, or this process's emptied S3 test buckets (tests/s3server.py)."""
    if s3:
        from tests.s3server import fresh_store

        store: BlobStore = fresh_store()
    else:
        store = LocalBlobStore(workdir / "buckets")
    shared_api().service.storage = store
    return store


class SplitBackend(Backend):
    def __init__(self, remote: RemoteQueue, engine: Backend) -> None:
        self.remote, self.engine = remote, engine

    # worker half: over HTTP
    def claim(
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
    ) -> list[ClaimedTask]:
        return self.remote.claim(worker_id, kinds, capacity, lease_s, max_gpus)

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        return self.remote.heartbeat(worker, leases, lease_s)

    def progress(self, lease: Lease, progress: Progress) -> None:
        self.remote.progress(lease, progress)

    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task:
        return self.remote.complete(lease, outputs)

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        return self.remote.fail(lease, error, retryable=retryable, code=code)

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        return self.remote.release(lease, delay_s=delay_s, error=error)

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        return self.remote.spawn_children(lease, children)

    def children(self, task_id: str) -> list[Task]:
        return self.engine.children(task_id)

    def spawned(self, lease: Lease) -> list[Task]:
        return self.remote.spawned(lease)

    def outputs_committed(self, task_id: str) -> Task:
        return self.engine.outputs_committed(task_id)

    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        self.remote.append_logs(task_id, attempt, lines)

    def wait_for_work(self, timeout: float) -> None:
        self.remote.wait_for_work(timeout)

    def close(self) -> None:
        self.remote.close()

    # operator half: the API's own engine
    def submit(self, task: Task) -> tuple[Task, bool]:
        return self.engine.submit(task)

    def reap(self) -> int:
        return self.engine.reap()

    def cancel(self, task_id: str) -> Task:
        return self.engine.cancel(task_id)

    def retry(self, task_id: str) -> Task:
        return self.engine.retry(task_id)

    def clear_pending(self) -> int:
        return self.engine.clear_pending()

    def get(self, task_id: str) -> Task | None:
        return self.engine.get(task_id)

    def counts(self, today: str | None = None) -> QueueCounts:
        return self.engine.counts(today)

    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]:
        return self.engine.workers(active_within_s)

    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        return self.engine.read_logs(task_id, attempt=attempt, after_seq=after_seq, limit=limit)

    def throughput(self, since: datetime, bucket_s: int = 3600) -> Any:
        return self.engine.throughput(since, bucket_s)

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
        return self.engine.list(
            status=status,
            date=date,
            kind=kind,
            limit=limit,
            cursor=cursor,
            text=text,
            external_id=external_id,
        )


class RemoteOpener:
    """Opens handles on one API per test; ``stop`` shuts the API down."""

    def __init__(self, workdir: Path) -> None:
        self.api = shared_api()
        self.engine = fresh_backend(workdir)

    def __call__(self, *, backoff_base: float = 0.05) -> Backend:
        self.engine.backoff_base = backoff_base
        return SplitBackend(RemoteQueue(ApiConnection(self.api.url)), self.engine)


class ServedRemoteStore(RemoteBlobStore):
    """A remote worker's storage engine, with the API it talks to.

    Over a local store the bytes stream through the API; over S3 they go
    straight to presigned URLs the API hands out.
    """

    def __init__(self, workdir: Path, s3: bool = False) -> None:
        self.behind = fresh_storage(workdir, s3)
        super().__init__(ApiConnection(shared_api().url))

    def stop(self) -> None:
        self.conn.close()
