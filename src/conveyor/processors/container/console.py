"""The container kind's own console page, /admin/tasks/run (image, command, env, GPUs,
limits), which ``ContainerProcessor.routers`` adds to the app.

Kept apart from the add-task page, which is built around an input file: a container
job has none, and its fields have nothing in common with the other kinds' but the
priority.  It builds the same ``SubmitRequest`` as ``POST /api/queue/add`` with this
kind; the processor validates the parameters.  A container job runs code the caller
supplies: the form is for roles with ``tasks:run_code`` only (the page says which),
and the service checks it again.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from conveyor.console import live
from conveyor.console.helpers import (
    ConsoleRoute,
    call,
    error_flash,
    first,
    page,
    read_form,
    set_flash,
    translator,
)
from conveyor.console.render import PREFIX, add_templates
from conveyor.errors import ConveyorError, InvalidRequest
from conveyor.models import Trigger
from conveyor.service import ConveyorService, SubmitRequest
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, audit, require, submitter_name

from . import ContainerProcessor

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
add_templates(Path(__file__).parent / "templates")  # run.html

FIELDS = ("image", "command", "env", "gpus", "timeout_s", "max_attempts", "priority")


def _number(raw: str, name: str, kind: type[int] | type[float]) -> Any:
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: not a number: {raw!r}") from None


def build_request(form: dict[str, str]) -> SubmitRequest:
    try:
        command = shlex.split(form["command"])
    except ValueError as exc:
        raise InvalidRequest(f"command: {exc}") from None
    params: dict[str, Any] = {"command": command}
    if form["image"]:
        params["image"] = form["image"]
    env: dict[str, str] = {}
    for line in form["env"].splitlines():
        if line.strip():
            name, sep, value = line.strip().partition("=")
            if not sep:
                raise InvalidRequest(f"env: expected NAME=value, not {line.strip()!r}")
            env[name.strip()] = value
    if env:
        params["env"] = env
    gpus = form["gpus"].replace(" ", "")
    if gpus:
        params["gpus"] = int(gpus) if gpus.isdigit() else [g for g in gpus.split(",") if g]
    priority = _number(form["priority"], "priority", int) or 0
    if not -100 <= priority <= 100:
        raise InvalidRequest("priority: from -100 to 100")
    return SubmitRequest(
        kind=ContainerProcessor.kind,
        params=params,
        priority=priority,
        timeout_s=_number(form["timeout_s"], "timeout_s", float),
        max_attempts=_number(form["max_attempts"], "max_attempts", int),
    )


@router.get("/tasks/run", dependencies=[require(Permission.TASKS_RUN_CODE)])
async def new_container_task(request: Request) -> Response:
    form = dict.fromkeys(FIELDS, "")
    form["priority"] = "0"
    return await page(request, "run.html", section="new", sse_url=live.stream_url("nav"), form=form)


@router.post("/tasks/run")
async def submit_container_task(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_RUN_CODE),
) -> Response:
    data = await read_form(request)
    form = {name: first(data, name) for name in FIELDS}
    form["env"] = (data.get("env") or [""])[0]  # keep line breaks
    t = translator(request)
    try:
        res = await call(
            service.submit,
            build_request(form),
            trigger=Trigger.CONSOLE,
            submitted_by=submitter_name(request, principal),
            caller=principal,
        )
        await audit(request, "submit", target=res.task.id)
    except ConveyorError as exc:
        return await page(
            request,
            "run.html",
            status=exc.http_status,
            section="new",
            sse_url=live.stream_url("nav"),
            form=form,
            flash=[error_flash(t, exc)],
        )
    resp = RedirectResponse(f"{PREFIX}/tasks/{res.task.id}", status_code=303)
    set_flash(resp, [{"level": "ok", "title": t("flash.submitted")}])
    return resp
