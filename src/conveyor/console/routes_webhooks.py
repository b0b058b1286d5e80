"""Webhook pages (``/admin/webhooks``): the subscriptions, one endpoint's delivery log with
"redeliver", and the deliveries shown on a task's page (docs/events.md).

Thin: every rule is ``ConveyorService.events``'.  An engine that keeps no events shows
the pages with that said, not an error.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from conveyor.events.model import Delivery
from conveyor.service import ConveyorService
from conveyor.service.events import EventsUnavailable
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, audit, require

from . import live
from .helpers import ConsoleRoute, call, done, page, read_form, translator
from .render import PREFIX

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def task_deliveries(
    service: ConveyorService, task_id: str, owner: str | None = None
) -> list[dict[str, Any]]:
    """A task's deliveries with their endpoints' URLs, oldest first ([] without events);
    a submitter's (``owner``): to the task's own webhook only."""
    try:
        items = service.events.task_deliveries(task_id, own_only=owner is not None)
        endpoints = service.events.endpoints_of(items)
    except EventsUnavailable:
        return []
    return [
        {
            "d": d,
            "url": endpoints[d.endpoint_id].url if d.endpoint_id in endpoints else "",
            "own": endpoints[d.endpoint_id].task_id is not None
            if d.endpoint_id in endpoints
            else False,
        }
        for d in items
    ]


@router.get("/webhooks")
async def webhooks_page(
    request: Request,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> Response:
    try:
        hooks = await call(service.events.subscriptions)
        unavailable = False
    except EventsUnavailable:
        hooks, unavailable = [], True
    return await page(
        request,
        "webhooks.html",
        section="webhooks",
        sse_url=live.stream_url("nav"),
        hooks=hooks,
        unavailable=unavailable,
    )


@router.get("/webhooks/{webhook_id}")
async def webhook_page(
    request: Request,
    webhook_id: str,
    cursor: str | None = Query(None),
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> Response:
    hook = await call(service.events.get, webhook_id)
    log = await call(lambda: service.events.deliveries(webhook_id, limit=50, cursor=cursor))
    return await page(
        request,
        "webhook.html",
        section="webhooks",
        sse_url=live.stream_url("nav"),
        hook=hook,
        deliveries=log.items,
        next_cursor=log.next_cursor,
    )


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(
    request: Request,
    webhook_id: str,
    delivery_id: str,
    service: ConveyorService = Depends(get_service),
    _: Principal = require(Permission.WEBHOOKS_MANAGE),
) -> Response:
    await read_form(request)
    d: Delivery = await call(lambda: service.events.redeliver(delivery_id, endpoint_id=webhook_id))
    await audit(request, "webhook_redeliver", target=d.id)
    dispatcher = getattr(getattr(request.app.state, "runtime", None), "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    t = translator(request)
    return done(
        request,
        [{"level": "ok", "title": t("webhooks.redelivered")}],
        f"{PREFIX}/webhooks/{webhook_id}",
    )
