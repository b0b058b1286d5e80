"""Seed 003's training requests, turned into ``container`` tasks.

Seed 003 took ``{"epochs", "batch_size", ...}`` and ran its training image
with them. Here the image and command come from the settings
(``CONVEYOR_TRAIN_IMAGE``, ``CONVEYOR_TRAIN_COMMAND``) and every field of the
body becomes a ``--flag value`` argument, so the example in
``examples/train_mlp`` (or any script with an argparse front) runs unchanged.
An empty ``CONVEYOR_TRAIN_IMAGE`` runs the command as a local process.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conveyor.models import Task
from conveyor.processors.container.settings import ContainerSettings
from conveyor.service import SubmitRequest

_ARG = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


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
    max_attempts: int = Field(3, ge=1, le=100, description="seed 003 retried 3 times")
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
        kind="container",
        params=params,
        priority=body.priority,
        max_attempts=body.max_attempts,
        timeout_s=body.timeout_s,
    )


def train_view(task: Task) -> dict[str, Any]:
    """A task as seed 003's ``GET /train/{id}`` showed a job, plus what Conveyor adds."""
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
