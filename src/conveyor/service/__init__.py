"""The service layer: every rule about tasks lives here, for every face.

The API, the console, the CLI (through the API) and the upload trigger all
call these methods; none of them touches a backend or storage directly.  What a
remote worker asks of the API is :class:`~conveyor.service.workers.WorkerProtocol`
(``ConveyorService.worker_protocol``), next to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import BaseModel, Field

from conveyor.auth.roles import Permission, roles_with, sees_only_own_tasks
from conveyor.auth.service import AuthService, Principal
from conveyor.backends import Backend
from conveyor.config import Settings
from conveyor.errors import (
    ConveyorError,
    Forbidden,
    InvalidRequest,
    ObjectNotFound,
    TaskNotFound,
)
from conveyor.metrics_data import MetricsSnapshot, ThroughputPoint
from conveyor.models import (
    InputRef,
    LogLine,
    Page,
    QueueCounts,
    Task,
    TaskStatus,
    Trigger,
    WorkerInfo,
)
from conveyor.processors import ProcessorRegistry
from conveyor.processors.base import ConsoleLink, KindForm, Processor
from conveyor.service.events import EventsService
from conveyor.service.waiting import WaitReason, scheduler_wait, why_waiting

if TYPE_CHECKING:
    from conveyor.service.workers import WorkerProtocol
from conveyor.storage import BlobStore, ObjectInfo, validate_bucket, validate_key
from conveyor.storage.base import BlobWriter

log = logging.getLogger(__name__)

_TASK_ID_RE = re.compile(r"^[0-9A-Za-z]{26}$")  # a ULID: the shape of a task id

# The types a streaming group's files are recorded with (docs/transcode-profiles.md), by
# name: a local store keeps no type and guesses from the name, and gets ``.ts`` wrong
# (Qt's translation files, text/vnd.trolltech.linguist).  Init segments are MP4 files.
STREAM_MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
}
PLAYLIST_SUFFIXES = (".m3u8", ".mpd")


def upload_dedup_key(obj: ObjectInfo) -> str:
    """One upload, one task: the trigger and an explicit submit share this key."""
    digest = hashlib.sha256(f"{obj.bucket}\x00{obj.key}\x00{obj.etag}".encode()).hexdigest()
    return f"upload:{digest}"


class SubmitRequest(BaseModel):
    """What a face hands the service; the transcoding service's body is a valid instance."""

    kind: str | None = Field(
        None, description="the kind of task; none: the default kind (GET /api/kinds)"
    )
    input_bucket: str | None = None
    input_key: str | None = None
    # the transcoding API's body names its types at the top level: a field of this request
    # that is a kind's param (its processor's ``request_fields``) goes into params
    transcode_types: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-100, le=100)
    idempotency_key: str | None = Field(None, max_length=512)
    max_attempts: int | None = Field(None, ge=1, le=100)
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)
    # the caller's own: returned untouched, carried by every event (docs/events.md)
    external_id: str | None = Field(None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = Field(None, description="a small JSON object")
    webhook: dict[str, Any] | str | None = Field(
        None,
        description="this task's own webhook: {url, events, secret}; or params.webhook",
    )


@dataclass
class SubmitResult:
    task: Task
    created: bool
    # the secret signing this task's own webhook, when Conveyor made it: shown this once
    webhook_secret: str | None = None


class QueueStatus(BaseModel):
    pending: int
    processing: int
    delayed: int
    waiting_for_children: int = 0  # parents held until their children complete
    completed_today: int
    failed_today: int
    cancelled_today: int
    workers: int
    date: str


class ChildrenSummary(BaseModel):
    """A parent's children (``WorkerQueue.spawn_children``) and its overall progress:
    each child counts for an equal share, a completed one for all of it."""

    parent_id: str
    total: int
    by_status: dict[str, int] = Field(default_factory=dict)
    percent: float = 0.0
    children: list[Task] = Field(default_factory=list)

    @classmethod
    def of(cls, parent_id: str, children: list[Task]) -> ChildrenSummary:
        by_status: dict[str, int] = {}
        done = 0.0
        for c in children:
            by_status[c.status.value] = by_status.get(c.status.value, 0) + 1
            if c.status == TaskStatus.COMPLETED:
                done += 100.0
            elif c.status == TaskStatus.PROCESSING:
                done += min(100.0, max(0.0, c.progress.percent))
        percent = round(done / len(children), 1) if children else 0.0
        return cls(
            parent_id=parent_id,
            total=len(children),
            by_status=by_status,
            percent=percent,
            children=children,
        )

    def waiting_text(self) -> str:
        done = self.by_status.get(TaskStatus.COMPLETED.value, 0)
        return f"waiting for its children: {done} of {self.total} completed ({self.percent:g} %)"


class BulkError(BaseModel):
    id: str
    code: str
    message: str


class BulkResult(BaseModel):
    """What a bulk action did: the tasks it changed and why the others were left alone."""

    done: list[Task] = Field(default_factory=list)
    errors: list[BulkError] = Field(default_factory=list)


@dataclass
class SubmitOptions:
    """What a form needs to offer: every kind, and for the add-task page the kinds it
    offers (each with its fieldset, the default first), the kinds' own pages, and the
    files the kinds take (for the file picker)."""

    kinds: list[str]
    default_kind: str | None
    input_bucket: str
    max_upload_bytes: int
    forms: dict[str, KindForm] = field(default_factory=dict)
    links: list[ConsoleLink] = field(default_factory=list)
    accept: list[str] = field(default_factory=list)


class KindInfo(BaseModel):
    """What a client needs to know of a kind to submit to it (``GET /api/kinds``)."""

    kind: str
    suffixes: list[str]
    content_types: list[str]
    params: list[str]
    default: bool = False
    runs_code: bool = False


# the request's own fields; any other field of it is a kind's param (``request_fields``)
_REQUEST_FIELDS = frozenset(
    {
        "kind",
        "input_bucket",
        "input_key",
        "params",
        "priority",
        "idempotency_key",
        "max_attempts",
        "timeout_s",
        "external_id",
        "metadata",
        "webhook",
    }
)


MAX_BULK = 1000


class ConveyorService:
    def __init__(
        self, settings: Settings, backend: Backend, storage: BlobStore, registry: ProcessorRegistry
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.storage = storage
        self.registry = registry
        self.started_at = time.time()

    # -- submitting ------------------------------------------------------------
    def submit(
        self,
        req: SubmitRequest,
        *,
        trigger: Trigger = Trigger.API,
        submitted_by: str | None = None,
        caller: Principal | None = None,
    ) -> SubmitResult:
        """``caller``: who asks (a face passes its principal; the open-mode admin when auth
        is off); None for the service's own submits (the upload trigger).  A caller needs
        tasks:run_code for a kind that runs its code, a grant for every secret it asks
        for, and, when its tasks are its own (submitter, developer), may touch only its
        own files (``check_object``)."""
        kind = req.kind if req.kind is not None else self.registry.default_kind()
        processor = self.registry.get(kind)
        if caller is not None:
            self._check_may_run(caller, processor)
        owner = caller.name if caller is not None and sees_only_own_tasks(caller.role) else None
        params = dict(req.params)
        webhook_spec = req.webhook if req.webhook is not None else params.pop("webhook", None)
        metadata = self._check_metadata(req.metadata)
        for name in sorted(set(type(req).model_fields) - _REQUEST_FIELDS):
            value = getattr(req, name)
            if value is None:
                continue
            if name not in processor.request_fields:
                owners = ", ".join(self.registry.request_field_kinds(name)) or "no"
                raise InvalidRequest(f"{name} only applies to {owners} tasks, not {kind}")
            params[name] = value
        params = processor.with_defaults(params)

        input_ref: InputRef | None = None
        if req.input_bucket is not None or req.input_key is not None:
            if not req.input_key:
                raise InvalidRequest("input_key is missing: name the object to process")
            bucket = req.input_bucket or self.settings.input_bucket
            bucket, key = self.check_object(bucket, req.input_key, owner=owner)
            input_ref = InputRef(bucket=bucket, key=key)
        # the body first (types, params), storage last: a request with an unknown type and
        # a missing input is told about the type (issue 18)
        params = processor.validate(params, input_ref)
        if processor.requires_input():
            if input_ref is None:
                raise InvalidRequest(f"{kind} tasks need an input: give input_bucket and input_key")
            if not self.storage.exists(input_ref.bucket, input_ref.key):
                raise ObjectNotFound(f"input object not found: {input_ref.bucket}/{input_ref.key}")
        if caller is not None:
            self._check_task_access(caller, owner, processor, params)
        if req.timeout_s is not None:  # the worker enforces it whatever the kind
            params["timeout_s"] = req.timeout_s

        task = Task(
            kind=kind,
            priority=req.priority,
            gpus=processor.gpus_needed(params),
            input=input_ref,
            params=params,
            # a kind may carry its own retry limit in its params (container: max_attempts)
            max_attempts=req.max_attempts
            or params.get("max_attempts")
            or self.settings.max_attempts,
            idempotency_key=req.idempotency_key,
            external_id=req.external_id,
            metadata=metadata,
            submitted_by=submitted_by,
            trigger=trigger,
        )
        # a task's own webhook is stored before the task, so its first event finds it
        webhook_secret: str | None = None
        endpoint = None
        if webhook_spec is not None:
            endpoint, webhook_secret = self.events.task_webhook(webhook_spec)
            self.events.attach(endpoint, task.id, submitted_by)
        stored, created = self.backend.submit(task)
        if endpoint is not None and not created:  # the key's task was returned: not ours
            self.events.detach(endpoint)
            webhook_secret = None
        if created:
            log.info(
                "Task queued: %s %s %s",
                stored.id,
                stored.kind,
                f"{input_ref.bucket}/{input_ref.key}" if input_ref else "-",
                extra={"task_id": stored.id},
            )
        return SubmitResult(task=stored, created=created, webhook_secret=webhook_secret)

    def _check_metadata(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        if not metadata:
            return {}
        limit = self.events.settings.metadata_max_bytes
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > limit:
            raise InvalidRequest(
                f"metadata is {size} bytes of JSON; at most {limit} "
                "(CONVEYOR_EVENTS_METADATA_MAX_BYTES): keep large data in a file"
            )
        return metadata

    def _check_may_run(self, caller: Principal, processor: Processor) -> None:
        if processor.runs_caller_code and not caller.may(Permission.TASKS_RUN_CODE):
            who = ", ".join(r.value for r in roles_with(Permission.TASKS_RUN_CODE))
            raise Forbidden(
                f"role {caller.role.value!r} may not run code (needs "
                f"{Permission.TASKS_RUN_CODE.value}): {processor.kind} tasks run code the "
                f"caller supplies; roles that may: {who}"
            )

    def _check_task_access(
        self, caller: Principal, owner: str | None, processor: Processor, params: dict[str, Any]
    ) -> None:
        """The objects, output folder and secrets a task with these params would touch."""
        missing = [n for n in processor.secrets_requested(params) if not caller.may_use_secret(n)]
        if missing:
            raise Forbidden(
                f"secret(s) not granted to this token: {', '.join(missing)}; an admin grants "
                "them by name ('conveyor token create --secret NAME')"
            )
        if owner is None:
            return
        for ref in processor.objects_read(params):
            self.check_object(ref.bucket, ref.key, owner=owner)
        prefix = processor.output_prefix(params)
        if prefix is not None and prefix != owner and not prefix.startswith(f"{owner}/"):
            raise Forbidden(
                f"params.output_prefix {prefix!r} is outside your folder: outputs of your "
                f"tasks go under '{owner}/' in bucket {self.settings.output_bucket}"
            )

    # -- auth --------------------------------------------------------------------
    @cached_property
    def auth(self) -> AuthService:
        """Tokens, sessions, enrollment and audit, kept in this backend (conveyor.auth)."""
        return AuthService(self.settings, self.backend.auth_store())

    @cached_property
    def events(self) -> EventsService:
        """Webhooks, deliveries and the event stream, kept in this backend (docs/events.md)."""
        from conveyor.backends.events_base import open_event_store

        return EventsService(lambda: open_event_store(self.backend), kinds=self.registry.kinds)

    @cached_property
    def worker_protocol(self) -> WorkerProtocol:
        """What a remote worker asks of the API (``/api/worker/v1``)."""
        from conveyor.service.workers import WorkerProtocol

        return WorkerProtocol(self)

    # -- reading ---------------------------------------------------------------
    def get(self, task_id: str, owner: str | None = None, *, explain: bool = False) -> Task:
        """``owner``: the submitter whose tasks alone the caller may touch (None: any);
        with ``explain``, a pending task says why no worker takes it."""
        task = self.backend.get(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        if owner is not None and task.submitted_by != owner:
            raise Forbidden(f"task {task_id} was submitted by someone else")
        return self.explain(task)[0] if explain else task

    def children(self, task_id: str, owner: str | None = None) -> ChildrenSummary:
        """A task's children (none for a task that never spawned) and its overall
        progress; ``owner`` as for :meth:`get` (children are their parent's submitter's)."""
        parent = self.get(task_id, owner)
        kids = self.backend.children(parent.id) if parent.children > 0 else []
        return ChildrenSummary.of(parent.id, kids)

    def waiting(self, task: Task) -> WaitReason | None:
        """Why no live worker can take ``task`` now (one read of the workers, if pending)."""
        if task.status != TaskStatus.PENDING or task.delayed:
            return None
        return why_waiting(task, self.workers())

    def explain(self, task: Task) -> tuple[Task, WaitReason | None]:
        """``task`` with ``waiting_reason`` filled in, and the reason for faces that translate.

        A claimed task whose attempt waits in an external scheduler (a pending Slurm job)
        says the scheduler's reason; faces show it as the attempt's progress message."""
        if task.waiting_for_children:  # held by its spawn, not delayed: say so
            summary = ChildrenSummary.of(task.id, self.backend.children(task.id))
            return task.model_copy(update={"waiting_reason": summary.waiting_text()}), None
        reason = self.waiting(task)
        if reason is None:
            held = scheduler_wait(task)
            if held is not None:
                return task.model_copy(update={"waiting_reason": held}), None
            return task, None
        return task.model_copy(update={"waiting_reason": reason.text()}), reason

    def counts(self, owner: str | None = None) -> QueueCounts:
        """The queue's counts; with ``owner``, those of that submitter's tasks only."""
        return self.backend.counts() if owner is None else self._owned_counts(owner)

    def _owned_counts(self, owner: str) -> QueueCounts:
        # the engines count by status, not by submitter: a submitter's counts come from
        # its tasks among the newest OWNER_SCAN_ROWS of each status
        from conveyor.models import date_partition, utcnow

        today = date_partition(utcnow())
        out = QueueCounts()
        for status in (
            TaskStatus.PENDING,
            TaskStatus.PROCESSING,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
        ):
            cursor: str | None = None
            scanned = 0
            while scanned < self.OWNER_SCAN_ROWS:
                page = self.backend.list(status=status, limit=1000, cursor=cursor)
                scanned += len(page.items)
                for t in page.items:
                    if t.submitted_by != owner:
                        continue
                    if status is TaskStatus.PENDING:
                        if t.waiting_for_children:
                            out.waiting_for_children += 1
                        elif t.delayed:
                            out.delayed += 1
                        else:
                            out.pending += 1
                    elif status is TaskStatus.PROCESSING:
                        out.processing += 1
                    elif t.finished_at is not None and date_partition(t.finished_at) == today:
                        name = f"{status.value}_today"
                        setattr(out, name, getattr(out, name) + 1)
                cursor = page.next_cursor
                if cursor is None:
                    break
        out.by_status = out.by_status_counts()
        return out

    def queue_status(self, owner: str | None = None) -> QueueStatus:
        """Queue state and today's totals; with ``owner``, of that submitter's tasks (the
        worker count stays the fleet's)."""
        c = self.counts(owner)
        from conveyor.models import date_partition, utcnow

        return QueueStatus(
            pending=c.pending,
            processing=c.processing,
            delayed=c.delayed,
            waiting_for_children=c.waiting_for_children,
            completed_today=c.completed_today,
            failed_today=c.failed_today,
            cancelled_today=c.cancelled_today,
            workers=len(self.backend.workers(active_within_s=self._worker_ttl())),
            date=date_partition(utcnow()),
        )

    def workers(self) -> list[WorkerInfo]:
        return self.backend.workers(active_within_s=self._worker_ttl())

    def _worker_ttl(self) -> float:
        return max(10.0, self.settings.heartbeat_interval * 5)

    def logs(
        self,
        task_id: str,
        *,
        attempt: int | None = None,
        after_seq: int = 0,
        limit: int = 1000,
        owner: str | None = None,
    ) -> list[LogLine]:
        self.get(task_id, owner)
        return self.backend.read_logs(task_id, attempt=attempt, after_seq=after_seq, limit=limit)

    # -- operator actions ----------------------------------------------------------
    def cancel(self, task_id: str, owner: str | None = None) -> Task:
        if owner is not None:
            self.get(task_id, owner)
        task = self.backend.cancel(task_id)
        log.info(
            "Task cancel requested: %s (now %s)",
            task_id,
            task.status.value,
            extra={"task_id": task_id},
        )
        return task

    def retry(self, task_id: str, owner: str | None = None) -> Task:
        if owner is not None:
            self.get(task_id, owner)
        task = self.backend.retry(task_id)
        log.info("Task retried: %s", task_id, extra={"task_id": task_id})
        return task

    def clear_queue(self) -> int:
        n = self.backend.clear_pending()
        log.info("Queue cleared: %d pending tasks cancelled", n)
        return n

    def bulk_cancel(self, task_ids: list[str], owner: str | None = None) -> BulkResult:
        return self._bulk(task_ids, lambda i: self.cancel(i, owner))

    def bulk_retry(self, task_ids: list[str], owner: str | None = None) -> BulkResult:
        return self._bulk(task_ids, lambda i: self.retry(i, owner))

    def _bulk(self, task_ids: list[str], action: Any) -> BulkResult:
        ids = list(dict.fromkeys(i.strip() for i in task_ids if i.strip()))
        if not ids:
            raise InvalidRequest("no tasks selected")
        if len(ids) > MAX_BULK:
            raise InvalidRequest(f"at most {MAX_BULK} tasks at once, not {len(ids)}")
        result = BulkResult()
        for task_id in ids:
            try:
                result.done.append(action(task_id))
            except ConveyorError as exc:  # one refusal must not stop the rest
                result.errors.append(BulkError(id=task_id, code=exc.code, message=exc.message))
        return result

    # -- console reads -------------------------------------------------------------
    def get_many(self, task_ids: list[str]) -> list[Task]:
        """The tasks among ``task_ids`` that exist, in the order given."""
        out: list[Task] = []
        for task_id in list(dict.fromkeys(task_ids))[:MAX_BULK]:
            task = self.backend.get(task_id)
            if task is not None:
                out.append(task)
        return out

    def throughput(self, hours: int = 24, bucket_s: int = 3600) -> list[ThroughputPoint]:
        """Completed and failed tasks per window over the last ``hours``, oldest first.

        Windows are aligned to ``bucket_s`` (whole hours by default); the last one is
        the window now running.
        """
        if not 1 <= hours <= 24 * 31 or not 60 <= bucket_s <= 86400:
            raise InvalidRequest("throughput covers 1 h to 31 days in windows of 1 min to 1 day")
        from datetime import UTC, datetime, timedelta

        now = time.time()
        start = now - now % bucket_s - (hours * 3600 // bucket_s - 1) * bucket_s
        since = datetime.fromtimestamp(start, UTC)
        points = self.backend.throughput(since, bucket_s)
        horizon = since + timedelta(seconds=hours * 3600)
        return [p for p in points if p.start < horizon]

    # -- metrics -------------------------------------------------------------------
    def metrics_snapshot(self) -> MetricsSnapshot:
        """What ``/metrics`` reports of the tasks, in one aggregate read of the engine.

        The engine is asked whether it is ready first: that fails in seconds when the
        database is down, where a pooled read would wait for the pool's timeout (and a
        scrape would time out instead of reporting it)."""
        self.backend.check_ready()
        return self.backend.metrics_snapshot()

    def recent_completed(self, kind: str, n: int) -> list[Task]:
        """The ``n`` tasks of ``kind`` that completed last (a kind's gauges read them)."""
        tasks: list[Task] = self.backend.recent_completed(kind, n)
        return tasks

    # -- what the kinds offer -------------------------------------------------------
    def submit_options(self) -> SubmitOptions:
        try:
            default: str | None = self.registry.default_kind()
        except ConveyorError:
            default = None
        forms: dict[str, KindForm] = {}
        links: list[ConsoleLink] = []
        accept: list[str] = []
        order = sorted(self.registry.items(), key=lambda item: (item[0] != default, item[0]))
        for kind, proc in order:
            form = proc.form()
            if form is not None:
                forms[kind] = form
                accept += sorted(proc.content_types) + sorted(proc.suffixes)
            links += proc.console_links()
        return SubmitOptions(
            kinds=self.registry.kinds(),
            default_kind=default,
            input_bucket=self.settings.input_bucket,
            max_upload_bytes=self.settings.max_upload_bytes,
            forms=forms,
            links=links,
            accept=list(dict.fromkeys(accept)),
        )

    def kinds(self) -> list[KindInfo]:
        """Every kind: what it takes, its params, which is the default."""
        try:
            default: str | None = self.registry.default_kind()
        except ConveyorError:
            default = None
        return [
            KindInfo(
                kind=kind,
                suffixes=sorted(proc.suffixes),
                content_types=sorted(proc.content_types),
                params=list(proc.params_model.model_fields),
                default=kind == default,
                runs_code=proc.runs_caller_code,
            )
            for kind, proc in self.registry.items()
        ]

    def params_from_form(self, kind: str, values: dict[str, list[str]]) -> dict[str, Any]:
        """The params the console's add-task page holds for a task of ``kind``."""
        return self.registry.get(kind).params_from_form(values)

    def upload_kind(self, key: str, content_type: str | None = None) -> str | None:
        """The kind an upload to the input bucket is queued as, or None: not queued."""
        return self.registry.kind_for(key, content_type, upload=True)

    def describe(self, task: Task) -> list[tuple[str, str]]:
        """What the console shows of ``task`` beside its params (its processor's tags)."""
        try:
            return self.registry.get(task.kind).describe(task)
        except ConveyorError:
            return []

    def close(self) -> None:
        """Release the engine's connections (the process is stopping)."""
        if "events" in self.__dict__:
            self.events.close()
        self.backend.close()

    # -- health --------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        checks = self._probe({"backend": self.backend.ping, "storage": self.storage.ping}, timeout)
        ok = all(v == "ok" for v in checks.values())
        return {**self._about(ok), "checks": checks}

    def _about(self, ok: bool) -> dict[str, Any]:
        from conveyor import __version__

        return {
            "status": "healthy" if ok else "unhealthy",
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "kinds": self.registry.kinds(),
        }

    @staticmethod
    def _probe(probes: Mapping[str, Callable[[], object]], timeout: float) -> dict[str, str]:
        """Each probe in a thread with one deadline: a check answers in ``timeout`` seconds
        even when a store hangs, or when the engine retries a lost connection in place."""
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures import TimeoutError as FutureTimeout

        pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="probe")
        futures = {name: pool.submit(probe) for name, probe in probes.items()}
        deadline = time.monotonic() + timeout
        checks: dict[str, str] = {}
        for name, fut in futures.items():
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
                checks[name] = "ok"
            except FutureTimeout:
                checks[name] = f"error: no answer in {timeout:g} s"
            except Exception as exc:  # a probe must report, not raise
                checks[name] = f"error: {exc}".strip()
        pool.shutdown(wait=False)
        return checks

    def ready(self, timeout: float = 5.0) -> dict[str, Any]:
        """Can this process serve requests now: backend reachable with the current schema,
        storage reachable, each answered within ``timeout`` seconds (see ``_probe``)."""
        probes = {"backend": self.backend.check_ready, "storage": self.storage.ping}
        checks = self._probe(probes, timeout)
        ok = all(v == "ok" for v in checks.values())
        return {"status": "ready" if ok else "unready", "checks": checks}

    def monitoring_health(self, *, queue: bool = True, owner: str | None = None) -> dict[str, Any]:
        """The monitoring path's health document: liveness, readiness, queue and workers in one
        read.

        ``queue=False`` for an anonymous caller (a probe needs no counts); ``owner``: a
        submitter, who sees its own counts."""
        ready = self.ready()
        body = self._about(ready["status"] == "ready")
        body["checks"] = ready["checks"]
        body["ready"] = ready["status"] == "ready"
        body["status"] = "healthy" if body["ready"] else "unhealthy"
        if body["ready"] and queue:
            try:
                body["queue"] = self.queue_status(owner).model_dump()
            except Exception as exc:  # the database went away between the two reads
                body["queue"] = {"error": str(exc)}
        return body

    # -- files ---------------------------------------------------------------------
    def check_object(
        self, bucket: str, key: str, *, owner: str | None = None, write: bool = False
    ) -> tuple[str, str]:
        """A valid bucket and key that the caller may read (or ``write``).

        ``owner``: a caller whose files are its own (submitter, developer; None for
        everyone else).  Such a caller reads and writes only under ``<owner>/`` in the
        input and output buckets, and reads the output folder of a task it submitted
        (``<task id>/`` in the output bucket, where container tasks keep theirs); its
        inputs and ``output_prefix`` obey the same rule (``submit``).  The check comes
        before any lookup, so a refusal says nothing about whether the object exists.
        """
        bucket, key = validate_bucket(bucket), validate_key(key)
        if owner is None:
            return bucket, key
        mine = (self.settings.input_bucket, self.settings.output_bucket)
        if bucket not in mine:
            raise Forbidden(
                f"bucket {bucket!r} is not yours: your files live under '{owner}/' in "
                f"buckets {' and '.join(dict.fromkeys(mine))}"
            )
        if key.startswith(f"{owner}/"):
            return bucket, key
        folder, sep, _ = key.partition("/")
        if (
            not write
            and sep
            and bucket == self.settings.output_bucket
            and self._owns_task(folder, owner)
        ):
            return bucket, key
        raise Forbidden(
            f"{bucket}/{key} is not yours: you {'write' if write else 'read'} only under "
            f"'{owner}/' in buckets {' and '.join(dict.fromkeys(mine))}"
            + ("" if write else ", and the output folders of your own tasks")
        )

    # the objects themselves: the caller checked its access first (``check_object``)
    def file_path(self, bucket: str, key: str) -> Path | None:
        """The object's file when the store is a local folder (served as it is), else None."""
        return self.storage.local_path(bucket, key)

    def file_info(self, bucket: str, key: str) -> ObjectInfo | None:
        return self.storage.stat(bucket, key)

    def file_exists(self, bucket: str, key: str) -> bool:
        return self.storage.exists(bucket, key)

    def file_media_type(self, key: str) -> str | None:
        """The type a stream's file (playlist, manifest, segment) is served with, as its
        output was recorded; None for any other file (its store's type, or a guess from
        the name)."""
        name = key.rsplit("/", 1)[-1].lower()
        suffix = name[name.rfind(".") :] if "." in name else ""
        if name.startswith("init") and suffix in (".m4s", ".mp4"):
            return "video/mp4"
        return STREAM_MEDIA_TYPES.get(suffix)

    def file_is_playlist(self, key: str) -> bool:
        """An HLS playlist or DASH manifest: it names other files relative to itself."""
        return key.lower().endswith(PLAYLIST_SUFFIXES)

    def file_url(self, bucket: str, key: str, expires_s: int = 3600) -> str | None:
        """A URL the caller downloads the object from itself (S3: presigned), or None."""
        return self.storage.url(bucket, key, expires_s)

    def open_file(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]:
        return self.storage.open(bucket, key)

    def file_writer(self, bucket: str, key: str, content_type: str | None = None) -> BlobWriter:
        """A writer whose object appears, whole, only when it commits."""
        return self.storage.writer(bucket, key, content_type)

    def delete_file(self, bucket: str, key: str) -> None:
        self.storage.delete(bucket, key)

    def list_files(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """The objects under ``prefix``, in key order."""
        return self.storage.list(bucket, prefix, start_after)

    def _owns_task(self, task_id: str, owner: str) -> bool:
        if not _TASK_ID_RE.match(task_id):
            return False
        task = self.backend.get(task_id)
        return task is not None and task.submitted_by == owner

    def list(
        self,
        *,
        status: str | None = None,
        date: str | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        text: str | None = None,
        owner: str | None = None,
        external_id: str | None = None,
    ) -> Page:
        if owner is not None:
            return self._list_owned(owner, status, date, kind, limit, cursor, text, external_id)
        st: TaskStatus | None = None
        if status:
            try:
                st = TaskStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in TaskStatus)
                raise InvalidRequest(f"unknown status {status!r}; use one of {known}") from None
        if date:
            try:
                time.strptime(date, "%Y-%m-%d")
            except ValueError:
                raise InvalidRequest(f"invalid date {date!r}: use YYYY-MM-DD") from None
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be between 1 and 1000")
        text = (text or "").strip() or None
        external_id = (external_id or "").strip() or None
        if external_id is not None:
            if len(external_id) > 256:
                raise InvalidRequest("external_id is limited to 256 characters")
            return self.backend.list(
                status=st,
                date=date,
                kind=kind,
                limit=limit,
                cursor=cursor,
                text=text,
                external_id=external_id,
            )
        if text is None:  # engines that predate ``text`` keep working without it
            return self.backend.list(status=st, date=date, kind=kind, limit=limit, cursor=cursor)
        if len(text) > 200:
            raise InvalidRequest("search text is limited to 200 characters")
        return self.backend.list(
            status=st, date=date, kind=kind, limit=limit, cursor=cursor, text=text
        )

    # the engines index tasks by date, status and kind, not by submitter: a submitter's
    # page is filled from successive pages of the unfiltered list, at most this many rows
    OWNER_SCAN_ROWS = 5_000

    def _list_owned(
        self,
        owner: str,
        status: str | None,
        date: str | None,
        kind: str | None,
        limit: int,
        cursor: str | None,
        text: str | None,
        external_id: str | None = None,
    ) -> Page:
        # each unfiltered page asks for no more rows than the page still lacks, so its
        # cursor resumes exactly after the last row looked at: paging stays exact
        items: list[Task] = []
        scanned = 0
        while True:
            page = self.list(
                status=status,
                date=date,
                kind=kind,
                limit=limit - len(items),
                cursor=cursor,
                text=text,
                external_id=external_id,
            )
            items.extend(t for t in page.items if t.submitted_by == owner)
            scanned += len(page.items)
            cursor = page.next_cursor
            if len(items) >= limit or cursor is None or scanned >= self.OWNER_SCAN_ROWS:
                return Page(items=items, next_cursor=cursor)
