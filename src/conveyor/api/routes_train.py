"""Seed 003's face: ``POST /train``, ``GET /train/{id}``, ``GET /stats``, ``GET /health``.

Thin aliases over the service, so a client written for the training agent
keeps working while its jobs gain a durable queue, retries and logs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from conveyor.models import Trigger
from conveyor.service import ConveyorService
from conveyor.training import TrainRequest, submit_request, train_view

from .deps import get_service
from .routes_health import health as api_health
from .security import Permission, Principal, audit, owner_filter, require, submitter_name

router = APIRouter(tags=["seed 003 (training)"])


@router.post("/train", status_code=201, summary="Queue a training run")
async def train(
    body: TrainRequest,
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_RUN_CODE),
) -> dict[str, Any]:
    """Runs the configured training command: code, so it needs tasks:run_code."""
    req = submit_request(body, service.settings)
    res = await run_in_threadpool(
        lambda: service.submit(
            req,
            trigger=Trigger.API,
            submitted_by=submitter_name(request, principal),
            caller=principal,
        )
    )
    await audit(request, "submit", target=res.task.id)
    return {**train_view(res.task), "message": "training task queued"}


@router.get("/train/{task_id}", summary="A training run's state")
async def train_status(
    task_id: str,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> dict[str, Any]:
    return train_view(await run_in_threadpool(service.get, task_id, owner_filter(principal)))


@router.get("/stats", summary="Task counts, as seed 003's /stats")
async def stats(
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> dict[str, Any]:
    """A submitter (or developer) gets the counts of its own tasks."""
    c = await run_in_threadpool(service.counts, owner_filter(principal))
    workers = await run_in_threadpool(service.workers)
    # totals of finished tasks are per day: a count over all time would scan the table
    return {
        "pending": c.pending + c.delayed,
        "running": c.processing,
        "completed_today": c.completed_today,
        "failed_today": c.failed_today,
        "cancelled_today": c.cancelled_today,
        "workers": len(workers),
        "gpus": sum(len(w.capabilities.get("container", {}).get("gpus", [])) for w in workers),
    }


@router.get(
    "/health", summary="Health, as seed 003's /health", dependencies=[require(Permission.PUBLIC)]
)
async def health(service: ConveyorService = Depends(get_service)) -> JSONResponse:
    return await api_health(service)
