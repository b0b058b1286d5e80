"""The training face of the container kind: the training agent's routes (``POST /train``,
``GET /train/{id}``, ``GET /stats``, ``GET /health``), which ``ContainerProcessor.routers``
adds to the app.

Thin aliases over the service, so a client written for the training agent keeps
working while its jobs gain a durable queue, retries and logs.  The agent took
``{"epochs", "batch_size", ...}`` and ran its training image with them.  Here the
image and command come from the settings (``CONVEYOR_TRAIN_IMAGE``,
``CONVEYOR_TRAIN_COMMAND``) and every field of the body becomes a ``--flag value``
argument, so the example in ``examples/train_mlp`` (or any script with an argparse
front) runs unchanged.  An empty ``CONVEYOR_TRAIN_IMAGE`` runs the command as a
local process.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from conveyor.api.routes_health import health as api_health
from conveyor.models import Task, Trigger
from conveyor.service import ConveyorService, SubmitRequest
from conveyor.web.deps import get_service
from conveyor.web.security import (
    Permission,
    Principal,
    audit,
    owner_filter,
    require,
    submitter_name,
)

from . import ContainerProcessor
from .settings import ContainerSettings

_ARG = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

router = APIRouter(tags=["training agent"])


class TrainRequest(BaseModel):
    """Hyper-parameters for the training script; unknown fields are passed on as flags."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"epochs": 3, "batch_size": 16}]},
    )

    epochs: int = Field(3, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    gpus: int | None = Field(None, ge=0, le=64, description="default CONVEYOR_TRAIN_GPUS")
    priority: int = Field(0, ge=-100, le=100)
    max_attempts: int = Field(3, ge=1, le=100, description="the training agent retried 3 times")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _extras(self) -> TrainRequest:
        for k, v in (self.model_extra or {}).items():
            if not _ARG.match(k):
                raise ValueError(f"invalid training argument name {k!r}")
            if not isinstance(v, str | int | float | bool):
                raise ValueError(f"training argument {k} must be a string, number or boolean")
        return self

    def arguments(self) -> list[str]:
        args = ["--epochs", str(self.epochs), "--batch-size", str(self.batch_size)]
        for k, v in (self.model_extra or {}).items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                args.append(flag)
            elif v is not False:
                args += [flag, str(v)]
        return args


def submit_request(body: TrainRequest, settings: Any) -> SubmitRequest:
    """``settings``: the service's (or the container kind's own)."""
    cfg = ContainerSettings.of(settings)
    params: dict[str, Any] = {
        "image": cfg.train_image or None,
        "command": [*cfg.train_command, *body.arguments()],
        "gpus": cfg.train_gpus if body.gpus is None else body.gpus,
    }
    return SubmitRequest(
        kind=ContainerProcessor.kind,
        params=params,
        priority=body.priority,
        max_attempts=body.max_attempts,
        timeout_s=body.timeout_s,
    )


def train_view(task: Task) -> dict[str, Any]:
    """A task as the training agent's ``GET /train/{id}`` showed a job, plus what Conveyor
    adds."""
    return {
        "task_id": task.id,
        "status": task.status.value,
        "progress": task.progress.model_dump(),
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "error": task.error,
        "error_code": task.error_code,
        "created_at": task.created_at.isoformat(),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "outputs": [o.model_dump(mode="json") for o in task.outputs],
        "logs": f"/api/tasks/{task.id}/logs",
    }


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


@router.get("/stats", summary="Task counts, as the training agent's /stats")
async def stats(
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> dict[str, Any]:
    """A submitter (or developer) gets the counts of its own tasks."""
    c = await run_in_threadpool(service.counts, owner_filter(principal))
    workers = await run_in_threadpool(service.workers)
    # totals of finished tasks are per day: a count over all time would scan the table
    kind = ContainerProcessor.kind
    return {
        "pending": c.pending + c.delayed + c.waiting_for_children,
        "running": c.processing,
        "completed_today": c.completed_today,
        "failed_today": c.failed_today,
        "cancelled_today": c.cancelled_today,
        "workers": len(workers),
        "gpus": sum(len(w.capabilities.get(kind, {}).get("gpus", [])) for w in workers),
    }


@router.get(
    "/health",
    summary="Health, as the training agent's /health",
    dependencies=[require(Permission.PUBLIC)],
)
async def health(service: ConveyorService = Depends(get_service)) -> JSONResponse:
    return await api_health(service)
