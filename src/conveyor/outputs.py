"""Outputs are committed, not just written: how a result becomes visible exactly once.

An attempt writes only under its own staging prefix,
``.conveyor-staging/<task>/<stamp>-<attempt>/<final key>``, a name no user key
can take (``validate_key`` refuses every ``.conveyor*`` segment).  The worker
then completes the task, fenced by its lease, naming what it staged
(``OutputFile.staged_key``).  Only after that are the staged objects moved to
their final keys, by whoever holds the completed record: the worker at once,
the API for a remote worker, or the sweep after a crash between the two steps.
A move is idempotent (a staged object already gone, whose final key holds an
object of the recorded size, was moved), so two movers never disagree.

A stale attempt cannot complete (the lease fences it), so nothing it staged
ever moves: it can only delete its own staging objects, and the sweep removes
whatever it leaves behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ulid import ULID

from conveyor.errors import InvalidRequest, ObjectNotFound
from conveyor.infra_errors import is_infrastructure_error
from conveyor.models import OutputFile, Task, TaskStatus
from conveyor.storage.base import STAGING_ROOT, BlobStore, ObjectInfo, validate_key

log = logging.getLogger("conveyor.outputs")

T = TypeVar("T")

# storage calls are retried in place this long when the store is unreachable
STORAGE_RETRY_S = 30.0


def retry_infrastructure(
    call: Callable[[], T], *, budget_s: float | None = None, what: str = "storage call"
) -> T:
    """``call()``, again with back-off (0.5 s doubling to 8 s) while it fails because
    the database or the store is unreachable, for at most ``budget_s`` seconds
    (``STORAGE_RETRY_S``, read at each call, when not given); any other error, or the
    last infrastructure one, is raised."""
    deadline = time.monotonic() + (STORAGE_RETRY_S if budget_s is None else budget_s)
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_infrastructure_error(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(8.0, delay * 2)


def task_staging(task_id: str) -> str:
    """Every attempt of one task stages below this prefix."""
    return f"{STAGING_ROOT}/{task_id}/"


def attempt_staging(task_id: str, attempt: int) -> str:
    """A fresh prefix for one attempt; later attempts sort after earlier ones."""
    return f"{task_staging(task_id)}{str(ULID()).lower()}-{attempt}/"


def staging_time(key: str) -> datetime | None:
    """When the attempt that staged ``key`` began staging (its prefix's ULID stamp)."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != STAGING_ROOT:
        return None
    try:
        return ULID.from_str(parts[2].rpartition("-")[0].upper()).datetime
    except ValueError:
        return None


def staging_owner(key: str) -> tuple[str, int] | None:
    """``(task id, attempt)`` of a staging key, or None if it is not one."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != STAGING_ROOT:
        return None
    stamp, _, attempt = parts[2].rpartition("-")
    if not stamp or not attempt.isdigit():
        return None
    return parts[1], int(attempt)


@dataclass
class Stager:
    """One attempt's writes: each output goes to the attempt's staging prefix, after a
    check that the attempt still holds its lease (``check_lease`` raises ``LeaseLost``)."""

    storage: BlobStore
    bucket: str
    prefix: str
    check_lease: Callable[[], None] = lambda: None
    # what this attempt staged, in order (a dict as an ordered set: thousands of segments
    # of a streaming ladder, staged from several threads at once)
    staged: dict[str, None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stage(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Write ``path`` to the staging twin of final ``key``; the staged object's info."""
        validate_key(key)
        staged_key = self.prefix + key
        self.check_lease()
        info = retry_infrastructure(
            lambda: self.storage.put_file(self.bucket, staged_key, path, content_type),
            what=f"staging {key}",
        )
        with self._lock:
            self.staged[staged_key] = None
        return info

    def put_file(
        self,
        name: str,
        key: str,
        path: Path,
        content_type: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> OutputFile:
        """Stage one output; the ``OutputFile`` names its final key and its staged twin."""
        info = self.stage(key, path, content_type)
        return OutputFile(
            name=name,
            bucket=self.bucket,
            key=key,
            size=info.size,
            content_type=content_type,
            meta=meta or {},
            staged_key=self.prefix + key,
        )

    def discard(self, keys: Iterable[str] | None = None) -> None:
        """Delete staged objects of this attempt (all of them by default); only its own."""
        with self._lock:
            wanted = list(self.staged if keys is None else keys)
        for staged_key in wanted:
            if not staged_key.startswith(self.prefix):
                continue
            try:
                self.storage.delete(self.bucket, staged_key)
            except Exception:
                log.warning("could not remove staged %s; the sweep will", staged_key)
            else:
                with self._lock:
                    self.staged.pop(staged_key, None)

    def missing(self, outputs: Iterable[OutputFile]) -> list[str]:
        """Outputs whose staged object is not (or no longer) there with its size: checked
        once, with one listing, before a completion names them."""
        want = {o.staged_key: o.size for o in outputs if o.staged_key}
        if not want:
            return []
        have = {
            i.key: i.size
            for i in retry_infrastructure(
                lambda: list(self.storage.list(self.bucket, self.prefix)),
                what="checking staged outputs",
            )
        }
        return sorted(k for k, size in want.items() if have.get(k) != size)

    def previous_attempt(self) -> tuple[str, list[ObjectInfo]] | None:
        """The newest earlier attempt's staging prefix of this task and what it holds
        (a container job's checkpoints), or None."""
        root = self.prefix.rsplit("/", 2)[0] + "/"
        folders: dict[str, list[ObjectInfo]] = {}
        for info in self.storage.list(self.bucket, root):
            folder = info.key[len(root) :].split("/", 1)[0]
            folders.setdefault(root + folder + "/", []).append(info)
        earlier = sorted(p for p in folders if p < self.prefix)
        if not earlier:
            return None
        return earlier[-1], folders[earlier[-1]]


def has_staged(task: Task) -> bool:
    return any(o.staged_key for o in task.outputs)


def promote_outputs(storage: BlobStore, task: Task) -> list[str]:
    """Move a completed task's staged outputs to their final keys; what could be neither
    moved nor found moved, as ``"<key>: <why>"``.  Safe to run twice, or from two places.
    An outage is raised (the move is finished later); any other error concerns one
    output and is reported, so one bad key does not hold back the others."""
    lost: list[str] = []
    for o in task.outputs:
        if not o.staged_key:
            continue
        src = o.staged_key
        try:
            retry_infrastructure(
                lambda o=o, src=src: storage.promote(o.bucket, src, o.key),  # type: ignore[misc]
                what=f"publishing {o.key}",
            )
        except ObjectNotFound:
            done = retry_infrastructure(lambda o=o: storage.stat(o.bucket, o.key))  # type: ignore[misc]
            if done is None or done.size != o.size:
                lost.append(f"{o.key}: its staged object is gone")
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            lost.append(f"{o.key}: {exc}")
    return lost


class CommitBackend(Protocol):
    def outputs_committed(self, task_id: str) -> Task: ...


def commit(backend: CommitBackend, storage: BlobStore, task: Task) -> Task:
    """Make a completed task's outputs visible and record that they are."""
    if task.status != TaskStatus.COMPLETED or not has_staged(task):
        return task
    lost = promote_outputs(storage, task)
    if lost:
        log.error(
            "Task %s: output(s) could not be published: %s",
            task.id,
            "; ".join(lost),
            extra={"task_id": task.id},
        )
    return retry_infrastructure(
        lambda: backend.outputs_committed(task.id), what="recording published outputs"
    )


def discard_task(storage: BlobStore, bucket: str, task_id: str) -> int:
    """Delete everything any attempt of a task staged (the task ended without outputs)."""
    n = 0
    for info in list(storage.list(bucket, task_staging(task_id))):
        try:
            storage.delete(bucket, info.key)
            n += 1
        except Exception:
            log.warning("could not remove staged %s; the sweep will", info.key)
    return n


def settle(backend: CommitBackend, storage: BlobStore, bucket: str, task: Task) -> Task:
    """After a task's outcome: a completed task's outputs made visible, and every final
    task's remaining staging removed.  Left to the API when the store is reached
    through it (a remote worker's)."""
    if not storage.can_promote:
        return task
    if task.status == TaskStatus.COMPLETED:
        task = commit(backend, storage, task)
    if task.status.is_final:  # what is left (checkpoints, other attempts') is no use now
        discard_task(storage, bucket, task.id)
    return task


def check_staged(outputs: Iterable[OutputFile], task_id: str, attempt: int, bucket: str) -> None:
    """Refuse a completion naming staged objects that are not this attempt's own, or final
    keys outside the output bucket: a worker moves only what it staged itself."""
    for o in outputs:
        if o.staged_key is None:
            continue
        owner = staging_owner(o.staged_key)
        if owner != (task_id, attempt) or o.bucket != bucket:
            raise InvalidRequest(
                f"output {o.key!r} names staged object {o.staged_key!r}, "
                f"which is not attempt {attempt} of task {task_id} in bucket {bucket!r}"
            )
        validate_key(o.key)


class SweepBackend(CommitBackend, Protocol):
    def get(self, task_id: str) -> Task | None: ...


def _sweep_task(
    backend: SweepBackend,
    storage: BlobStore,
    bucket: str,
    task_id: str,
    objects: list[ObjectInfo],
    settled: datetime,
    expired: datetime,
) -> tuple[int, int]:
    task = backend.get(task_id)
    keep: set[str] = set()
    committed = 0
    if task is not None and task.status == TaskStatus.COMPLETED and has_staged(task):
        if task.finished_at is not None and task.finished_at > settled:
            return 0, 0  # its worker (or the API) is publishing it now: one mover at a time
        keep = {o.staged_key for o in task.outputs if o.staged_key}
        commit(backend, storage, task)
        committed = 1
    elif task is not None and not task.status.is_final:
        now = datetime.now(UTC)
        # earlier attempts' checkpoints, after a day; never what the running attempt staged
        # (its prefix was stamped after the task's latest start)
        started = (task.started_at or task.created_at) - timedelta(seconds=5)
        objects = [
            o
            for o in objects
            if o.modified is not None
            and o.modified < expired
            and (task.status != TaskStatus.PROCESSING or (staging_time(o.key) or now) < started)
        ]
    removed = 0
    for o in objects:
        if o.key in keep:
            continue
        try:
            storage.delete(bucket, o.key)
            removed += 1
        except Exception:
            log.warning("could not remove staged %s", o.key, exc_info=True)
    return committed, removed


def sweep(
    backend: SweepBackend,
    storage: BlobStore,
    bucket: str,
    *,
    settle_s: float = 60.0,
    max_age_s: float = 86400.0,
) -> tuple[int, int]:
    """Finish commits a crash interrupted and remove staging nobody will use; returns
    ``(tasks committed, objects removed)``.

    Objects younger than ``settle_s``, and tasks completed less than ``settle_s`` ago,
    are left alone (their attempt or its commit may still be under way; two movers at
    once could each copy an object to its final key).  A completed task's named staged
    objects are committed; what else sits under a final task is removed; a task still
    pending or running keeps its attempts' staging (a container job's next attempt
    restores from it) for ``max_age_s``.
    """
    now = datetime.now(UTC)
    settled = now - timedelta(seconds=settle_s)
    expired = now - timedelta(seconds=max_age_s)
    by_task: dict[str, list[ObjectInfo]] = {}
    for info in storage.list(bucket, STAGING_ROOT + "/"):
        owner = staging_owner(info.key)
        if owner is not None:
            by_task.setdefault(owner[0], []).append(info)
    committed = removed = 0
    for task_id, objects in by_task.items():
        if any(o.modified is None or o.modified > settled for o in objects):
            continue
        try:
            done, gone = _sweep_task(backend, storage, bucket, task_id, objects, settled, expired)
        except Exception:  # one task's trouble must not hold back the others
            log.warning("staging sweep of task %s failed; will retry", task_id, exc_info=True)
            continue
        committed += done
        removed += gone
    if committed or removed:
        log.info("Staging sweep: %d commit(s) finished, %d object(s) removed", committed, removed)
    return committed, removed
