"""What a remote worker asks of the API (``/api/worker/v1``), next to the service.

A remote worker holds no database or store credentials: the API runs its calls
on its own engine and store.  The worker's half of the engine contract (claim,
heartbeat, progress, complete, fail, release, logs, waiting for work) with what
the API adds around it: a completion names only staging of the attempt the
engine knows, and the API makes its outputs visible (the worker cannot move
objects in the API's store); and the files of the tasks it runs, with presigned
uploads where the store makes them.  Who may call what (a credential speaks for
its own worker only) stays with the routes, which know the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor import outputs
from conveyor.errors import InvalidRequest
from conveyor.models import (
    ClaimedTask,
    HeartbeatResult,
    Lease,
    OutputFile,
    Progress,
    Task,
    WorkerInfo,
)
from conveyor.storage.base import ObjectInfo

if TYPE_CHECKING:
    from conveyor.service import ConveyorService

log = logging.getLogger("conveyor.api")

# S3 takes at most 5 GiB in one PUT; above that the worker streams through the
# API, whose S3 writer uploads in parts.
MAX_PRESIGNED_PUT = 5 * 1024**3


@dataclass
class PresignedUpload:
    """Where a worker PUTs an object: a presigned URL (with its headers), presigned parts
    of a multipart upload (``multipart``: upload id, part size, one URL per part), or
    neither (the store cannot presign: the worker streams it through the API)."""

    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    multipart: tuple[str, int, list[str]] | None = None


class WorkerProtocol:
    """The engine's worker half and the worker's files, for the worker protocol's routes.

    Reads the service's engine and store at every call (never a copy), so it follows
    the service when they are replaced."""

    def __init__(self, service: ConveyorService) -> None:
        self.service = service

    # -- the queue -------------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
    ) -> list[ClaimedTask]:
        return self.service.backend.claim(worker_id, kinds, capacity, lease_s, max_gpus)

    def wait_for_work(self, timeout: float) -> None:
        self.service.backend.wait_for_work(timeout)

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        return self.service.backend.heartbeat(worker, leases, lease_s)

    def progress(self, lease: Lease, progress: Progress) -> None:
        self.service.backend.progress(lease, progress)

    def complete(self, lease: Lease, done: list[OutputFile]) -> Task:
        """Complete under ``lease``; its outputs are made visible by :meth:`publish`."""
        backend = self.service.backend
        current = backend.get(lease.task_id)
        # the attempt is the engine's, not what the caller says: staging of another attempt
        # of the task is never named (the token fences the completion itself)
        attempt = current.attempts if current is not None else lease.attempt
        outputs.check_staged(done, lease.task_id, attempt, self.service.settings.output_bucket)
        return backend.complete(lease, done)

    def publish(self, task: Task) -> None:
        """Make a completed task's outputs visible (a failure is left to the sweep)."""
        s = self.service
        try:
            outputs.settle(s.backend, s.storage, s.settings.output_bucket, task)
        except Exception:
            log.warning(
                "outputs of task %s not published yet; the sweep will", task.id, exc_info=True
            )

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        """Fail the attempt; a task that is final now has its staging removed."""
        s = self.service
        task = s.backend.fail(lease, error, retryable=retryable, code=code)
        return outputs.settle(s.backend, s.storage, s.settings.output_bucket, task)

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        return self.service.backend.release(lease, delay_s=delay_s, error=error)

    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        self.service.backend.append_logs(task_id, attempt, lines)

    def task(self, task_id: str) -> Task | None:
        """The task as the engine has it (who runs it, which attempt), or None."""
        return self.service.backend.get(task_id)

    # -- files -----------------------------------------------------------------------
    def upload_target(
        self, bucket: str, key: str, size: int, content_type: str | None, expires_s: int
    ) -> PresignedUpload:
        """A presigned PUT when the store can make one; presigned parts above its multipart
        threshold; neither for a store that cannot presign (a local folder)."""
        storage: Any = self.service.storage
        multipart = getattr(storage, "presign_multipart", None)
        if multipart is not None and size > storage.multipart_threshold:
            upload_id, part_size, urls = multipart(bucket, key, size, expires_s, content_type)
            return PresignedUpload(multipart=(upload_id, part_size, list(urls)))
        presign = getattr(storage, "presign_put", None)
        if presign is None or size > MAX_PRESIGNED_PUT:
            return PresignedUpload()
        url, headers = presign(bucket, key, expires_s, content_type)
        return PresignedUpload(url=url, headers=headers)

    def _multipart_store(self) -> Any:
        storage = self.service.storage
        if not hasattr(storage, "complete_multipart"):
            raise InvalidRequest("this API's store takes no presigned multipart uploads")
        return storage

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, etags: Sequence[str]
    ) -> ObjectInfo:
        info: ObjectInfo = self._multipart_store().complete_multipart(
            bucket, key, upload_id, list(etags)
        )
        return info

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self._multipart_store().abort_multipart(bucket, key, upload_id)
