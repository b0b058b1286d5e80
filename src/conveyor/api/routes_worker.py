"""The worker protocol over HTTP: the backend contract's worker half, for remote hosts.

A remote worker (``conveyor worker --backend https://API``) holds no
database or queue credentials: it claims, heartbeats, reports progress and
outcomes, and ships its log through these routes, which call the service's
``WorkerProtocol`` and so the same engine the API uses.  Fencing is the
engine's: a stale lease is refused with ``409 lease_lost``.

Every route authenticates through the one dependency :func:`worker_principal`.
A task credential (a job running one attempt for an executor: ``conveyor.auth.
task_credentials``) passes the same dependency and is held to its one task and
attempt by :func:`_scoped` (``conveyor.service.workers.check_scope``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from conveyor.auth.roles import Permission
from conveyor.auth.service import OPEN_PRINCIPAL
from conveyor.auth.service import Principal as AuthPrincipal
from conveyor.errors import ConveyorError
from conveyor.models import (
    ClaimedTask,
    HeartbeatResult,
    InputRef,
    Lease,
    OutputFile,
    Progress,
    Task,
    WorkerInfo,
)
from conveyor.service import ConveyorService
from conveyor.service.workers import TaskScopeRefused, check_scope, job_worker_info
from conveyor.web.deps import get_service
from conveyor.web.security import require

from .work_signal import WorkSignal

router = APIRouter(prefix="/api/worker/v1", tags=["worker"])
log = logging.getLogger("conveyor.api")

MAX_WAIT_S = 30.0
MAX_LOG_LINES = 5000
MAX_LOG_LINE = 64 * 1024


class WorkerForbidden(ConveyorError):
    code = "forbidden"
    http_status = 403


@dataclass(frozen=True)
class WorkerPrincipal:
    """Who is calling the worker protocol.

    ``worker_id`` is the id the credential was issued to; ``None`` means any
    id is accepted (the API runs without auth).
    """

    name: str
    worker_id: str | None = None
    # a task credential: the one task and attempt it speaks for (None: a worker's own)
    task_id: str | None = None
    attempt: int | None = None

    @property
    def scope(self) -> tuple[str, int] | None:
        if self.task_id is None or self.attempt is None:
            return None
        return self.task_id, self.attempt


def worker_principal(
    caller: Annotated[AuthPrincipal, require(Permission.WORKER_PROTOCOL)],
) -> WorkerPrincipal:
    """Authenticate ``Authorization: Bearer <credential>`` for the worker protocol.

    The single seam between the worker protocol and the token store: only a
    credential of role ``worker`` holds ``worker:protocol`` (an unknown,
    revoked or expired one is a 401, another role a 403).  With auth off
    every caller is accepted and may speak for any worker id.
    """
    if caller is OPEN_PRINCIPAL:
        return WorkerPrincipal(name=caller.name)
    return WorkerPrincipal(
        name=caller.name,
        worker_id=caller.worker_id or caller.name,
        task_id=caller.task_id,
        attempt=caller.attempt,
    )


Principal = Annotated[WorkerPrincipal, Depends(worker_principal)]
Service = Annotated[ConveyorService, Depends(get_service)]


def _own(principal: WorkerPrincipal, worker_id: str) -> None:
    """A credential speaks for its own worker only."""
    if principal.worker_id is not None and principal.worker_id != worker_id:
        raise WorkerForbidden(
            f"this credential belongs to worker {principal.worker_id!r}, not {worker_id!r}"
        )


def _scoped(principal: WorkerPrincipal, task_id: str, attempt: int | None, what: str) -> None:
    """A task credential speaks for its own task and attempt only."""
    check_scope(principal.scope, task_id, attempt, what)


def _unscoped(principal: WorkerPrincipal, what: str) -> None:
    """What only a worker's own credential may do (claim, wait, issue task credentials)."""
    if principal.scope is not None:
        raise TaskScopeRefused(
            f"a task credential speaks for task {principal.task_id} attempt "
            f"{principal.attempt} only: it cannot {what}"
        )


def work_signal(request: Request, service: ConveyorService) -> WorkSignal:
    """The app's one :class:`WorkSignal`, made on first use."""
    signal: WorkSignal | None = getattr(request.app.state, "work_signal", None)
    if signal is None:
        signal = request.app.state.work_signal = WorkSignal(service.worker_protocol)
    return signal


def stop_work_signal(state: Any) -> None:
    signal: WorkSignal | None = getattr(state, "work_signal", None)
    if signal is not None:
        signal.stop()


# -- bodies ------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Kind = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ClaimBody(_Body):
    worker_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kinds: list[Kind] = Field(max_length=64)
    capacity: int = Field(ge=1, le=256)
    lease_s: float = Field(gt=0, le=86400)
    wait_s: float = Field(
        0.0, ge=0, le=MAX_WAIT_S, description="When nothing is ready, wait this long for work."
    )
    max_gpus: int | None = Field(
        None, ge=0, le=1024, description="Claim only tasks needing at most this many GPUs."
    )


class ClaimResponse(BaseModel):
    claimed: list[ClaimedTask]
    generation: int = Field(description="Pass as `since` to /wait after an empty claim.")


class WaitBody(_Body):
    timeout: float = Field(ge=0, le=MAX_WAIT_S)
    since: int | None = None


class WaitResponse(BaseModel):
    generation: int


class HeartbeatBody(_Body):
    worker: WorkerInfo
    leases: list[Lease] = Field(max_length=1024)
    lease_s: float = Field(gt=0, le=86400)


class ProgressBody(_Body):
    lease: Lease
    progress: Progress


class CompleteBody(_Body):
    lease: Lease
    outputs: list[OutputFile] = Field(max_length=50_000)


class FailBody(_Body):
    lease: Lease
    error: Annotated[str, StringConstraints(max_length=MAX_LOG_LINE)]
    retryable: bool
    code: str | None = None


class ReleaseBody(_Body):
    lease: Lease
    delay_s: float = Field(0.0, ge=0, le=3600)
    error: Annotated[str, StringConstraints(max_length=MAX_LOG_LINE)] | None = None


class ChildSpec(_Body):
    """A child to spawn: the rest (parent, submitter, ids) is the parent's or new."""

    kind: Kind
    input: InputRef | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    max_attempts: int = Field(3, ge=1, le=100)


class SpawnBody(_Body):
    lease: Lease
    children: list[ChildSpec] = Field(min_length=1, max_length=10_000)


class LogEntry(_Body):
    ts: datetime
    stream: Annotated[str, StringConstraints(max_length=32)] = "worker"
    line: Annotated[str, StringConstraints(max_length=MAX_LOG_LINE)]


class LogsBody(_Body):
    task_id: str
    attempt: int = Field(ge=0)
    worker_id: str
    lines: list[LogEntry] = Field(max_length=MAX_LOG_LINES)


# -- routes -----------------------------------------------------------------------------
@router.post("/claim", summary="Lease up to `capacity` tasks (optionally waiting for work)")
async def claim(
    body: ClaimBody, request: Request, principal: Principal, service: Service
) -> ClaimResponse:
    _unscoped(principal, "claim tasks")
    _own(principal, body.worker_id)
    signal = work_signal(request, service)
    protocol = service.worker_protocol
    # read before the query: a submit after it bumps the generation (see WorkSignal)
    generation = signal.generation
    args = (body.worker_id, list(body.kinds), body.capacity, body.lease_s, body.max_gpus)
    claimed = await run_in_threadpool(protocol.claim, *args)
    # a wake may be spurious (the engine's wait_for_work may return early, and another
    # worker may take the task first): claim again after each one until wait_s is up
    deadline = time.monotonic() + body.wait_s
    while not claimed and (left := deadline - time.monotonic()) > 0:
        generation = await signal.wait(generation, left)
        claimed = await run_in_threadpool(protocol.claim, *args)
    return ClaimResponse(claimed=claimed, generation=generation)


class WhoAmI(BaseModel):
    worker_id: str | None = Field(
        description="The worker id this credential speaks for (null: any, auth off)."
    )


@router.get("/whoami", summary="The worker id a credential speaks for")
async def whoami(principal: Principal) -> WhoAmI:
    return WhoAmI(worker_id=principal.worker_id)


@router.post("/wait", summary="Long-poll: return when new work may be available")
async def wait(
    body: WaitBody, request: Request, principal: Principal, service: Service
) -> WaitResponse:
    _unscoped(principal, "wait for work")
    generation = await work_signal(request, service).wait(body.since, body.timeout)
    return WaitResponse(generation=generation)


@router.post("/heartbeat", summary="Renew every lease the worker holds, in one call")
async def heartbeat(body: HeartbeatBody, principal: Principal, service: Service) -> HeartbeatResult:
    _own(principal, body.worker.id)
    for lease in body.leases:
        _own(principal, lease.worker_id)
        _scoped(principal, lease.task_id, lease.attempt, "heartbeat")
    worker = body.worker
    if principal.scope is not None and principal.worker_id is not None:
        worker = job_worker_info(worker, principal.scope, principal.worker_id)
    return await run_in_threadpool(
        service.worker_protocol.heartbeat, worker, list(body.leases), body.lease_s
    )


@router.post("/progress", status_code=204, summary="Report a task's progress")
async def progress(body: ProgressBody, principal: Principal, service: Service) -> Response:
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "progress")
    await run_in_threadpool(service.worker_protocol.progress, body.lease, body.progress)
    return Response(status_code=204)


@router.post("/complete", summary="Complete a task with its outputs")
async def complete(
    body: CompleteBody, principal: Principal, service: Service, background: BackgroundTasks
) -> Task:
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "complete")
    protocol = service.worker_protocol
    task = await run_in_threadpool(protocol.complete, body.lease, list(body.outputs))
    # the worker cannot move objects in the API's store: the API makes them visible, after
    # answering (a slow store must not time the worker out; the sweep finishes any crash)
    background.add_task(protocol.publish, task)
    return task


@router.post("/fail", summary="Fail a task's attempt (retried when retryable)")
async def fail(body: FailBody, principal: Principal, service: Service) -> Task:
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "fail")

    def call() -> Task:
        return service.worker_protocol.fail(
            body.lease, body.error, retryable=body.retryable, code=body.code
        )

    return await run_in_threadpool(call)


@router.post("/release", summary="Hand a task back without counting the attempt")
async def release(body: ReleaseBody, principal: Principal, service: Service) -> Task:
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "release")

    def call() -> Task:
        return service.worker_protocol.release(body.lease, delay_s=body.delay_s, error=body.error)

    return await run_in_threadpool(call)


@router.post("/spawn", summary="Spawn a task's children; it waits until they completed")
async def spawn(body: SpawnBody, principal: Principal, service: Service) -> Task:
    """Fenced by the parent's lease like /complete (a repeat with that lease inserts
    nothing); children are of the parent's kind, on its input (WorkerProtocol)."""
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "spawn")
    children = [
        Task(kind=c.kind, input=c.input, params=c.params, max_attempts=c.max_attempts)
        for c in body.children
    ]
    return await run_in_threadpool(service.worker_protocol.spawn_children, body.lease, children)


class LeaseBody(_Body):
    lease: Lease


class SpawnedResponse(BaseModel):
    children: list[Task]


@router.post("/spawned", summary="The children of a task this worker runs")
async def spawned(body: LeaseBody, principal: Principal, service: Service) -> SpawnedResponse:
    """What a parent's run after its children reads (their outputs): only while the
    caller runs that task."""
    _own(principal, body.lease.worker_id)
    _scoped(principal, body.lease.task_id, body.lease.attempt, "read children")
    kids = await run_in_threadpool(service.worker_protocol.spawned, body.lease)
    return SpawnedResponse(children=kids)


@router.post("/logs", status_code=204, summary="Append lines to a task attempt's log")
async def logs(body: LogsBody, principal: Principal, service: Service) -> Response:
    _own(principal, body.worker_id)
    _scoped(principal, body.task_id, body.attempt, "logs")
    if principal.worker_id is not None:  # a credential writes only its own tasks' logs

        def owner() -> str | None:
            task = service.worker_protocol.task(body.task_id)
            return task.worker_id if task else None

        if await run_in_threadpool(owner) != principal.worker_id:
            raise WorkerForbidden(f"task {body.task_id} is not run by this worker")
    lines = [(e.ts, e.stream, e.line) for e in body.lines]
    if lines:
        await run_in_threadpool(
            service.worker_protocol.append_logs, body.task_id, body.attempt, lines
        )
    return Response(status_code=204)


# -- task credentials: a job that runs one attempt elsewhere -------------------------
class TaskCredentialBody(_Body):
    lease: Lease
    ttl_s: float = Field(
        86400.0,
        gt=0,
        le=14 * 86400,
        description="How long the job may take to start and run (capped at 14 days).",
    )


class TaskCredentialOut(BaseModel):
    task_id: str
    attempt: int
    worker_id: str
    credential: str = Field(description="speaks for this task and attempt only")
    expires_at: datetime


@router.post(
    "/task-credential",
    summary="A credential scoped to one task attempt this worker holds (for the job that runs it)",
)
async def task_credential(
    body: TaskCredentialBody, principal: Principal, service: Service
) -> TaskCredentialOut:
    """An executor (``conveyor worker --executor slurm``) holds the lease and runs the
    attempt as a job elsewhere; the job gets this credential and nothing else."""
    _unscoped(principal, "issue task credentials")
    _own(principal, body.lease.worker_id)
    cred = await run_in_threadpool(
        service.worker_protocol.task_credential, principal.worker_id, body.lease, body.ttl_s
    )
    return TaskCredentialOut(
        task_id=cred.task_id,
        attempt=cred.attempt,
        worker_id=cred.worker_id,
        credential=cred.credential,
        expires_at=cred.expires_at,
    )


@router.get("/tasks/{task_id}", summary="A task this worker (or this task credential) runs")
async def held_task(task_id: str, principal: Principal, service: Service) -> Task:
    """The task as the engine has it, to the worker running it now (a job started with a
    task credential reads its task here)."""
    _scoped(principal, task_id, None, "read a task")
    return await run_in_threadpool(
        service.worker_protocol.held_task, principal.worker_id, task_id, principal.attempt
    )
