"""The task and queue paths of the transcoding service's REST API, kept as its clients
know them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict

from conveyor.api.scope import Caller, caller
from conveyor.errors import Conflict
from conveyor.models import LogLine, Task, Trigger
from conveyor.service import ChildrenSummary, ConveyorService, QueueStatus, SubmitRequest
from conveyor.web.deps import get_service
from conveyor.web.security import (
    Permission,
    Principal,
    audit,
    owner_filter,
    require,
    submitter_name,
)

router = APIRouter(prefix="/api", tags=["tasks"])


class AddTaskBody(SubmitRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "input_bucket": "input",
                    "input_key": "video.mp4",
                    "transcode_types": ["mp4_standard", "thumbnail"],
                }
            ]
        },
    )


@router.post("/queue/add", status_code=201, summary="Add a task")
async def add_task(
    body: AddTaskBody,
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_SUBMIT),
) -> dict[str, Any]:
    res = await run_in_threadpool(
        service.submit,
        body,
        trigger=Trigger.API,
        submitted_by=submitter_name(request, principal),
        caller=principal,
    )
    if res.created:
        await audit(request, "submit", target=res.task.id)
    else:
        owner = owner_filter(principal)
        if owner is not None and res.task.submitted_by != owner:  # keys are global
            raise Conflict(
                "another submitter's task already holds this idempotency_key: use another key"
            )
    out = {
        "task_id": res.task.id,
        "status": res.task.status.value,
        "created": res.created,
        "message": "task queued" if res.created else "existing task returned (idempotency_key)",
        "task": res.task.model_dump(mode="json"),
    }
    if res.webhook_secret is not None:  # shown this once: it signs this task's webhook
        out["webhook_secret"] = res.webhook_secret
    return out


@router.get("/queue/status", summary="Queue state and today's totals")
async def queue_status(who: Caller = caller(Permission.TASKS_READ)) -> QueueStatus:
    """A submitter (or developer) gets the counts of its own tasks."""
    return await run_in_threadpool(who.service.queue_status, who.owner)


@router.post("/queue/clear", summary="Cancel every pending task")
async def clear_queue(
    request: Request,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.QUEUE_CLEAR),
) -> dict[str, Any]:
    n = await run_in_threadpool(service.clear_queue)
    await audit(request, "clear", detail=f"{n} pending task(s) cancelled")
    return {"cancelled": n, "message": f"{n} pending task(s) cancelled"}


@router.get("/tasks", summary="List tasks, newest first")
async def list_tasks(
    date: str | None = Query(None, description="YYYY-MM-DD (UTC)"),
    status: str | None = Query(None, description="pending|processing|completed|failed|cancelled"),
    kind: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    external_id: str | None = Query(None, description="the caller's own id given on submit"),
    who: Caller = caller(Permission.TASKS_READ),
) -> dict[str, Any]:
    page = await run_in_threadpool(
        who.service.list,
        status=status,
        date=date,
        kind=kind,
        limit=limit,
        cursor=cursor,
        owner=who.owner,
        external_id=external_id,
    )
    return {
        "tasks": [t.model_dump(mode="json") for t in page.items],
        "count": len(page.items),
        "next_cursor": page.next_cursor,
    }


@router.get("/tasks/{task_id}", summary="One task")
async def get_task(task_id: str, who: Caller = caller(Permission.TASKS_READ)) -> Task:
    """A pending task that no live worker can take says why in ``waiting_reason``."""
    return await run_in_threadpool(lambda: who.service.get(task_id, who.owner, explain=True))


@router.get("/tasks/{task_id}/children", summary="A task's children and its overall progress")
async def task_children(
    task_id: str, who: Caller = caller(Permission.TASKS_READ)
) -> ChildrenSummary:
    """The tasks a task split into (e.g. a long video's chunks), oldest first, with their
    count by status and the parent's overall progress (each child an equal share)."""
    return await run_in_threadpool(lambda: who.service.children(task_id, who.owner))


@router.post("/tasks/{task_id}/cancel", summary="Cancel a task")
async def cancel_task(
    task_id: str,
    request: Request,
    who: Caller = caller(Permission.TASKS_CANCEL),
) -> Task:
    task = await run_in_threadpool(who.service.cancel, task_id, who.owner)
    await audit(request, "cancel", target=task_id)
    return task


@router.post("/tasks/{task_id}/retry", summary="Retry a failed or cancelled task")
async def retry_task(
    task_id: str,
    request: Request,
    who: Caller = caller(Permission.TASKS_RETRY),
) -> Task:
    task = await run_in_threadpool(who.service.retry, task_id, who.owner)
    await audit(request, "retry", target=task_id)
    return task


@router.get(
    "/tasks/{task_id}/logs",
    summary="A task's log, per attempt",
    description="JSON by default; with `follow=true` a server-sent event stream: one `log` "
    "event per line (id = its seq, so a reconnect with Last-Event-ID resumes), then an "
    "`end` event carrying the task's final status.",
    response_model=None,
)
async def task_logs(
    request: Request,
    task_id: str,
    attempt: int | None = Query(None, ge=1),
    after: int = Query(0, ge=0, description="only lines with seq greater than this"),
    limit: int = Query(1000, ge=1, le=10000),
    follow: bool = Query(False, description="stream new lines as server-sent events"),
    who: Caller = caller(Permission.TASKS_READ),
) -> dict[str, Any] | StreamingResponse:
    service, owner = who.service, who.owner
    if follow:
        await run_in_threadpool(service.get, task_id, owner)  # 404 before the stream starts
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else after
        return StreamingResponse(
            _follow_logs(request, service, task_id, attempt, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    lines: list[LogLine] = await run_in_threadpool(
        service.logs, task_id, attempt=attempt, after_seq=after, limit=limit, owner=owner
    )
    return {
        "task_id": task_id,
        "lines": [ln.model_dump(mode="json") for ln in lines],
        "last_seq": lines[-1].seq if lines else after,
    }


FOLLOW_POLL_S = 0.5
FOLLOW_KEEPALIVE_S = 15.0


async def _follow_logs(
    request: Request, service: ConveyorService, task_id: str, attempt: int | None, after: int
) -> AsyncIterator[str]:
    """Poll the service (so lines from workers on any host show up) until the task ends.

    The worker ships its last lines just after it records the outcome, so the
    stream reads once more after it sees a final status before it ends.
    """
    state = getattr(request.app.state, "console", None)
    closing = getattr(state, "closing", None)
    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    final_seen = False
    while not (closing is not None and closing.is_set()):
        if await request.is_disconnected():
            return
        lines: list[LogLine] = await run_in_threadpool(
            service.logs, task_id, attempt=attempt, after_seq=after, limit=1000
        )
        if lines:
            after = lines[-1].seq
            quiet_since = time.monotonic()
            yield "".join(
                f"id: {ln.seq}\nevent: log\ndata: {ln.model_dump_json()}\n\n" for ln in lines
            )
            continue
        if final_seen:
            task: Task = await run_in_threadpool(service.get, task_id)
            end = {"status": task.status.value, "error": task.error, "attempts": task.attempts}
            yield f"event: end\ndata: {json.dumps(end)}\n\n"
            return
        task = await run_in_threadpool(service.get, task_id)
        final_seen = task.status.is_final
        if time.monotonic() - quiet_since >= FOLLOW_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(FOLLOW_POLL_S)
