"""Liveness and readiness, at the transcoding service's path (``/api/health``) and the
monitoring path (``/api/v1/monitoring/health``) their clients already call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from conveyor.service import ConveyorService
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, is_anonymous, owner_filter, require

router = APIRouter(tags=["health"])


@router.get(
    "/api/health",
    summary="Liveness and a summary",
    dependencies=[require(Permission.PUBLIC)],
)
async def health(service: ConveyorService = Depends(get_service)) -> JSONResponse:
    body: dict[str, Any] = await run_in_threadpool(service.health)
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)


@router.get(
    "/api/ready",
    summary="Readiness: backend and storage reachable, schema current",
    dependencies=[require(Permission.PUBLIC)],
)
async def ready(service: ConveyorService = Depends(get_service)) -> JSONResponse:
    """For load balancers and Kubernetes: 503 takes this process out of rotation until the
    database comes back, without restarting it."""
    body: dict[str, Any] = await run_in_threadpool(service.ready)
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get(
    "/api/v1/monitoring/health",
    summary="Health, readiness and queue in one document (the monitoring path)",
    description="The queue's counts only for a caller with a token that may read tasks "
    "(a submitter's own counts); an anonymous probe gets health and readiness alone.",
)
async def monitoring_health(
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.PUBLIC),
) -> JSONResponse:
    queue = not is_anonymous(principal) and principal.may(Permission.TASKS_READ)
    owner = owner_filter(principal)
    body: dict[str, Any] = await run_in_threadpool(
        lambda: service.monitoring_health(queue=queue, owner=owner)
    )
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)


@router.get(
    "/api/workers",
    summary="Workers seen recently",
    dependencies=[require(Permission.WORKERS_READ)],
)
async def workers(service: ConveyorService = Depends(get_service)) -> list[dict[str, Any]]:
    return [w.model_dump(mode="json") for w in await run_in_threadpool(service.workers)]
