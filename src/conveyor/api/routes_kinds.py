"""``GET /api/kinds``: the kinds of task this service runs, what each takes (file
suffixes and content types, by which ``conveyor submit FILE`` picks one), its params,
and which one a submit without a kind gets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from conveyor.service import ConveyorService
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, require

router = APIRouter(prefix="/api", tags=["tasks"])


@router.get(
    "/kinds",
    summary="The kinds of task and what each takes",
    dependencies=[require(Permission.TASKS_READ)],
)
async def kinds(service: ConveyorService = Depends(get_service)) -> dict[str, Any]:
    found = await run_in_threadpool(service.kinds)
    default = next((k.kind for k in found if k.default), None)
    return {"default": default, "kinds": [k.model_dump() for k in found]}
