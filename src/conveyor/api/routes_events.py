"""Events out (docs/events.md): webhook subscriptions and their delivery logs, a task's
deliveries, and the event stream (``GET /api/events``, server-sent events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from conveyor.api.scope import Caller, caller
from conveyor.errors import InvalidRequest
from conveyor.events.model import Delivery, Event
from conveyor.models import TaskStatus
from conveyor.service import ConveyorService
from conveyor.service.events import WebhookCreate, WebhookCreated, WebhookView, sse
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, audit, require

router = APIRouter(prefix="/api", tags=["events"])

STREAM_POLL_S = 0.5
STREAM_KEEPALIVE_S = 15.0


@router.post("/webhooks", status_code=201, summary="Subscribe a URL to task events")
async def create_webhook(
    body: WebhookCreate,
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> WebhookCreated:
    """The answer holds the signing secret: it is shown this once.  A URL whose host is
    (or resolves to) a loopback, link-local or private address is refused with 400
    ``webhook_refused`` unless an admin allows its range (``CONVEYOR_EVENTS_ALLOW_CIDRS``)."""
    created = await run_in_threadpool(service.events.create, body, created_by=principal.name)
    await audit(request, "webhook_create", target=created.id, detail=created.url)
    return created


@router.get("/webhooks", summary="Webhook subscriptions")
async def list_webhooks(
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> dict[str, Any]:
    hooks = await run_in_threadpool(service.events.subscriptions)
    return {"webhooks": [h.model_dump(mode="json") for h in hooks], "count": len(hooks)}


@router.get("/webhooks/{webhook_id}", summary="One webhook subscription")
async def get_webhook(
    webhook_id: str,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> WebhookView:
    return await run_in_threadpool(service.events.get, webhook_id)


@router.delete("/webhooks/{webhook_id}", summary="Delete a webhook and its delivery log")
async def delete_webhook(
    webhook_id: str,
    request: Request,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> dict[str, Any]:
    await run_in_threadpool(service.events.delete, webhook_id)
    await audit(request, "webhook_delete", target=webhook_id)
    return {"deleted": webhook_id}


@router.get("/webhooks/{webhook_id}/deliveries", summary="A webhook's delivery log")
async def webhook_deliveries(
    webhook_id: str,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> dict[str, Any]:
    """Newest event first: state (pending, delivered, failed), tries, the last answer's
    status, latency and first KiB, and when the next try is due."""
    page = await run_in_threadpool(
        lambda: service.events.deliveries(webhook_id, limit=limit, cursor=cursor)
    )
    return {
        "deliveries": [d.model_dump(mode="json") for d in page.items],
        "count": len(page.items),
        "next_cursor": page.next_cursor,
    }


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send a delivery again",
)
async def redeliver(
    webhook_id: str,
    delivery_id: str,
    request: Request,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> Delivery:
    """Due at once, with the same event id (receivers de-duplicate on it)."""
    d = await run_in_threadpool(
        lambda: service.events.redeliver(delivery_id, endpoint_id=webhook_id)
    )
    await audit(request, "webhook_redeliver", target=delivery_id)
    runtime = getattr(request.app.state, "runtime", None)
    dispatcher = getattr(runtime, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    return d


@router.get("/tasks/{task_id}/deliveries", summary="A task's webhook deliveries")
async def task_deliveries(
    task_id: str, who: Caller = caller(Permission.TASKS_READ)
) -> dict[str, Any]:
    """Oldest first, to every endpoint (the task's own webhook and subscriptions); a
    submitter sees those to the task's own webhook only."""
    service, owner = who.service, who.owner

    def read() -> dict[str, Any]:
        service.get(task_id, owner)  # 404 for a task this caller may not see
        items = service.events.task_deliveries(task_id, own_only=owner is not None)
        endpoints = service.events.endpoints_of(items)
        return {
            "deliveries": [d.model_dump(mode="json") for d in items],
            "endpoints": {k: {"url": v.url, "task_id": v.task_id} for k, v in endpoints.items()},
        }

    return await run_in_threadpool(read)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@router.get(
    "/events",
    summary="The event stream (server-sent events)",
    description="One SSE event per task event: `id` is its place in the stream, `event` "
    "its type, `data` the same JSON a webhook receives.  `since` (or the Last-Event-ID "
    "header on a reconnect) resumes after that id; without either the stream starts now. "
    "Filter by `kind` and `status` (repeat or comma-separate).  A submitter sees its own "
    "tasks' events only.",
    response_class=StreamingResponse,
)
async def events_stream(
    request: Request,
    since: int | None = Query(None, ge=0, description="resume after this event id (0: all)"),
    kind: list[str] | None = Query(None),
    status: list[str] | None = Query(None),
    follow: bool = Query(True, description="false: send what is there, then end the stream"),
    who: Caller = caller(Permission.TASKS_READ),
) -> StreamingResponse:
    service = who.service
    kinds, statuses = _split(kind), _split(status)
    known = {s.value for s in TaskStatus}
    if bad := [s for s in statuses if s not in known]:
        raise InvalidRequest(f"unknown status {', '.join(bad)}; use {', '.join(sorted(known))}")
    service.events.check_kinds(kinds)
    last = request.headers.get("last-event-id", "").strip()
    if last.isdigit():
        since = int(last)
    if since is None:
        since = await run_in_threadpool(service.events.last_seq)
    return StreamingResponse(
        _follow(request, service, since, kinds, statuses, who.owner, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _follow(
    request: Request,
    service: ConveyorService,
    since: int,
    kinds: list[str],
    statuses: list[str],
    owner: str | None,
    follow: bool = True,
) -> AsyncIterator[str]:
    state = getattr(request.app.state, "console", None)
    closing = getattr(state, "closing", None)
    yield f"retry: 2000\nid: {since}\n\n"
    quiet_since = time.monotonic()
    while not (closing is not None and closing.is_set()):
        if await request.is_disconnected():
            return
        events: list[Event] = await run_in_threadpool(
            service.events.stream, since, kinds=kinds, statuses=statuses, owner=owner
        )
        if events:
            since = events[-1].seq
            quiet_since = time.monotonic()
            yield "".join(sse(e) for e in events)
            continue
        if not follow:
            return
        if time.monotonic() - quiet_since >= STREAM_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(STREAM_POLL_S)
