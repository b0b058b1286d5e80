"""What a remote worker asks of the API (``/api/worker/v1``), next to the service.

A remote worker holds no database or store credentials: the API runs its calls
on its own engine and store.  The worker's half of the engine contract (claim,
heartbeat, progress, complete, fail, release, logs, waiting for work) with what
the API adds around it: a completion names only staging of the attempt the
engine knows, and the API makes its outputs visible (the worker cannot move
objects in the API's store); and the files of the tasks it runs, with presigned
uploads where the store makes them.  Who may call what (a credential speaks for
its own worker only) stays with the routes, which know the caller.

Task credentials (``conveyor.auth.task_credentials``): a worker that holds a lease
but runs the attempt elsewhere (the Slurm executor: a job on a compute node) asks
for a credential scoped to that task and attempt (:meth:`WorkerProtocol.task_credential`)
and gives only that to the job.  What such a credential may do is decided here
(:func:`check_scope`, :meth:`WorkerProtocol.task_reads`, :func:`job_worker_info`) and
enforced by the routes: report on its own lease, ship its own attempt's log, read its
task's inputs and its task's staging, write its attempt's staging; never claim, never
another task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor import outputs
from conveyor.errors import Forbidden, InvalidRequest, LeaseLost
from conveyor.models import (
    ClaimedTask,
    HeartbeatResult,
    Lease,
    OutputFile,
    Progress,
    Task,
    TaskStatus,
    WorkerInfo,
)
from conveyor.storage.base import ObjectInfo

if TYPE_CHECKING:
    from conveyor.auth.service import TaskCredential
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


class TaskScopeRefused(Forbidden):
    """A task credential asked for something outside its one task and attempt."""

    code = "task_scope"


def check_scope(
    scope: tuple[str, int] | None, task_id: str, attempt: int | None = None, what: str = ""
) -> None:
    """Refuse a task credential (``scope``: its task id and attempt; None for any other
    caller) speaking for another task, or for another attempt of its own."""
    if scope is None:
        return
    task, number = scope
    if task_id != task or (attempt is not None and attempt != number):
        where = f"task {task_id}" + (f" attempt {attempt}" if attempt is not None else "")
        raise TaskScopeRefused(
            f"this task credential speaks for task {task} attempt {number} only, "
            f"not {where}{': ' + what if what else ''}"
        )


def job_worker_info(info: WorkerInfo, scope: tuple[str, int], worker_id: str) -> WorkerInfo:
    """What a job's heartbeat records: the job under an id of its own (never its executor's,
    whose record it would overwrite), taking no kinds (it claims nothing, so it never
    counts as a worker that could take a waiting task)."""
    task_id, attempt = scope
    caps = {k: v for k, v in info.capabilities.items() if k != "unavailable"}
    caps["task_job"] = {"task_id": task_id, "attempt": attempt, "executor": worker_id}
    return info.model_copy(
        update={
            "id": f"{worker_id}/{task_id}.{attempt}",
            "kinds": [],
            "concurrency": 1,
            "running": [task_id],
            "capabilities": caps,
        }
    )


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

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        """Children for the leased task, each of its kind, on its input, with params its
        kind validates: a worker spawns the work its task splits into, never a task it
        could not have been given (another kind, another object, caller code)."""
        backend = self.service.backend
        parent = backend.get(lease.task_id)
        if parent is None:
            raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")
        # a kind this API does not run has no params rule here: its parent was not
        # submitted through it either, and its children are of its kind and input only
        processor = dict(self.service.registry.items()).get(parent.kind)
        checked: list[Task] = []
        for i, child in enumerate(children):
            if child.kind != parent.kind:
                raise InvalidRequest(
                    f"child {i} is a {child.kind} task; a {parent.kind} task spawns "
                    f"{parent.kind} tasks only"
                )
            if child.input != parent.input:
                raise InvalidRequest(f"child {i} names another input than its parent's")
            if processor is None:
                checked.append(child.model_copy(update={"gpus": parent.gpus}))
                continue
            params = processor.validate(child.params, child.input)
            checked.append(
                child.model_copy(update={"params": params, "gpus": processor.gpus_needed(params)})
            )
        return backend.spawn_children(lease, checked)

    def spawned(self, lease: Lease) -> list[Task]:
        """The children of a task the lease's worker runs now (that attempt)."""
        self.held_task(lease.worker_id, lease.task_id, lease.attempt)
        return self.service.backend.children(lease.task_id)

    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        self.service.backend.append_logs(task_id, attempt, lines)

    def task(self, task_id: str) -> Task | None:
        """The task as the engine has it (who runs it, which attempt), or None."""
        return self.service.backend.get(task_id)

    # -- task credentials --------------------------------------------------------------
    def held_task(self, worker_id: str | None, task_id: str, attempt: int | None = None) -> Task:
        """The task, if ``worker_id`` runs it now (and that ``attempt`` of it); else
        ``LeaseLost``.  ``worker_id`` None: any worker (the API runs without auth)."""
        task = self.service.backend.get(task_id)
        if (
            task is None
            or task.status != TaskStatus.PROCESSING
            or (worker_id is not None and task.worker_id != worker_id)
            or (attempt is not None and task.attempts != attempt)
        ):
            which = f"task {task_id}" + (f" attempt {attempt}" if attempt is not None else "")
            raise LeaseLost(f"{which} is not run by this worker now")
        return task

    def task_credential(self, worker_id: str | None, lease: Lease, ttl_s: float) -> TaskCredential:
        """A credential for the job that runs ``lease``'s attempt elsewhere: it speaks for
        that task and attempt only (conveyor.auth.task_credentials).  Only the worker
        that holds the attempt gets one."""
        task = self.held_task(worker_id, lease.task_id, lease.attempt)
        holder = task.worker_id or lease.worker_id
        return self.service.auth.issue_task_credential(holder, task.id, lease.attempt, ttl_s)

    def task_reads(self, task_id: str) -> set[tuple[str, str]]:
        """The objects outside staging a task's job may read: its input and what its
        processor says it reads (``objects_read``)."""
        task = self.service.backend.get(task_id)
        if task is None:
            return set()
        refs = [task.input] if task.input is not None else []
        try:
            refs += self.service.registry.get(task.kind).objects_read(task.params)
        except Exception:  # an unknown kind reads nothing more
            log.debug("no processor for %s here", task.kind, exc_info=True)
        found = {(r.bucket, r.key) for r in refs}
        if task.children > 0:  # a parent's run after its children reads their outputs
            found |= {
                (o.bucket, o.key) for c in self.service.backend.children(task.id) for o in c.outputs
            }
        return found

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
