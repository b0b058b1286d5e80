"""``https://API`` (and ``http://``): a ``WorkerQueue`` over the API, for remote workers.

A remote worker holds only the API's URL and its own credential: no
database or queue credentials, outbound connections only.  Each call of
the worker loop (claim, heartbeat, progress, complete, fail, release, log
chunks, waiting for work) is one request to ``/api/worker/v1``; the API
runs it on its own engine, so fencing and every other rule stay the
engine's.  This engine implements the worker's half of the contract only:
submitting, listing, cancelling and the rest of the ``TaskStore`` half are
the API's own calls, and publishing outputs and the staging sweep are done
by the API too (a remote worker runs with no task store).

``wait_for_work`` long-polls the API, which wakes it when work arrives, so
an idle remote worker starts a new task one round trip and a half after a
submit instead of at its next poll.  With ``claim_wait_s`` (what
``conveyor worker`` uses) an empty claim itself waits on the API for up to
that long and returns the task as soon as it is submitted: half a round
trip, and one request per idle interval instead of two.  It is off by
default because the contract's ``claim`` returns at once.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

from conveyor.backends.base import WorkerQueue
from conveyor.models import (
    ClaimedTask,
    HeartbeatResult,
    Lease,
    OutputFile,
    Progress,
    Task,
    WorkerInfo,
)
from conveyor.remote.connection import ApiConnection, connect

PREFIX = "/api/worker/v1"
MAX_WAIT_S = 30.0
LOG_CHUNK = 2000  # lines per request at most ...
LOG_CHUNK_BYTES = 512 * 1024  # ... and half the API's default JSON body limit (1 MiB)


class LogsPartlyShipped(Exception):
    """Shipping stopped after ``sent`` lines: the caller keeps only the rest."""

    def __init__(self, sent: int, cause: BaseException) -> None:
        super().__init__(f"{sent} log lines shipped, then: {cause}")
        self.sent = sent


class RemoteQueue(WorkerQueue):
    """A worker queue over HTTP: the worker half of the contract, run by the API's engine."""

    def __init__(self, conn: ApiConnection, *, claim_wait_s: float = 0.0) -> None:
        self.conn = conn
        self.claim_wait_s = max(0.0, min(claim_wait_s, MAX_WAIT_S))
        self._claim_waited = False  # the last claim came back empty after waiting
        self._generation: int | None = None
        self._worker_id = ""
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> RemoteQueue:
        """``CONVEYOR_WORKER_CREDENTIAL`` and ``CONVEYOR_CA_CERT`` come from the environment."""
        return cls(connect(url))

    def _post(self, op: str, body: dict[str, Any], *, idempotent: bool, **kw: Any) -> Any:
        return self.conn.call(f"{PREFIX}/{op}", body, idempotent=idempotent, **kw)

    @staticmethod
    def _dump(model: Any) -> Any:
        return model.model_dump(mode="json")

    # -- worker protocol -----------------------------------------------------------
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
        self._worker_id = worker_id
        body = {
            "worker_id": worker_id,
            "kinds": kinds,
            "capacity": capacity,
            "lease_s": lease_s,
            "wait_s": self.claim_wait_s,
            "max_gpus": max_gpus,
        }
        # not idempotent: a claim the API ran but whose answer was lost leases
        # tasks nobody runs (until their lease expires), so retry unsent ones only
        res = self._post("claim", body, idempotent=False, timeout=self.claim_wait_s + 30)
        claimed = [ClaimedTask.model_validate(c) for c in res["claimed"]]
        with self._lock:
            self._generation = int(res["generation"])
            self._claim_waited = not claimed and self.claim_wait_s > 0
        return claimed

    def wait_for_work(self, timeout: float) -> None:
        timeout = max(0.0, min(float(timeout), MAX_WAIT_S))
        with self._lock:
            since = self._generation
            if self._claim_waited:  # that claim has just waited for work on the API
                self._claim_waited = False
                return
        if timeout == 0:
            return
        res = self._post(
            "wait", {"timeout": timeout, "since": since}, idempotent=True, timeout=timeout + 15
        )
        with self._lock:
            self._generation = int(res["generation"])

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        self._worker_id = worker.id
        body = {
            "worker": self._dump(worker),
            "leases": [self._dump(le) for le in leases],
            "lease_s": lease_s,
        }
        return HeartbeatResult.model_validate(self._post("heartbeat", body, idempotent=True))

    def progress(self, lease: Lease, progress: Progress) -> None:
        body = {"lease": self._dump(lease), "progress": self._dump(progress)}
        self._post("progress", body, idempotent=True)

    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task:
        body = {"lease": self._dump(lease), "outputs": [self._dump(o) for o in outputs]}
        # safe to repeat: the engine answers a second completion with the same lease alike
        return Task.model_validate(self._post("complete", body, idempotent=True))

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        body = {"lease": self._dump(lease), "error": error, "retryable": retryable, "code": code}
        return Task.model_validate(self._post("fail", body, idempotent=False))

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        body = {"lease": self._dump(lease), "delay_s": delay_s, "error": error}
        return Task.model_validate(self._post("release", body, idempotent=False))

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        body = {
            "lease": self._dump(lease),
            "children": [
                {
                    "kind": c.kind,
                    "input": None if c.input is None else self._dump(c.input),
                    "params": c.params,
                    "max_attempts": c.max_attempts,
                }
                for c in children
            ],
        }
        # safe to repeat: the engine answers a second spawn with the same lease alike
        return Task.model_validate(self._post("spawn", body, idempotent=True))

    def spawned(self, lease: Lease) -> list[Task]:
        res = self._post("spawned", {"lease": self._dump(lease)}, idempotent=True)
        return [Task.model_validate(t) for t in res["children"]]

    def reap(self) -> int:
        """Nothing to do here: the API process runs the reaper next to its engine."""
        return 0

    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        """Ship in requests bounded by lines and by bytes, so a burst of long lines
        never meets the API's body limit; a failure says how many lines went out,
        so they are not sent (and logged) twice."""
        entries = [
            {"ts": ts.isoformat(), "stream": stream, "line": line} for ts, stream, line in lines
        ]
        sent = 0
        while sent < len(entries):
            chunk: list[dict[str, str]] = []
            size = 0
            for entry in entries[sent : sent + LOG_CHUNK]:
                n = len(json.dumps(entry["line"])) + 96  # escaped as sent at worst; keys, ts
                if chunk and size + n > LOG_CHUNK_BYTES:
                    break
                chunk.append(entry)
                size += n
            body = {
                "task_id": task_id,
                "attempt": attempt,
                "worker_id": self._worker_id,
                "lines": chunk,
            }
            try:
                # a resent chunk would be logged twice: retry only what never left
                self._post("logs", body, idempotent=False)
            except Exception as exc:
                if sent == 0:
                    raise
                raise LogsPartlyShipped(sent, exc) from exc
            sent += len(chunk)

    def ping(self) -> None:
        self.conn.send("GET", "/api/health", idempotent=True)

    def check_ready(self) -> None:
        self.ping()

    def close(self) -> None:
        self.conn.close()
