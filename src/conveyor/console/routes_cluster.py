"""The cluster page (``/admin/cluster``): a Slurm cluster as Conveyor sees it, read from Slurm.

Partitions (nodes up, CPUs and GPUs free), nodes and their state, and the jobs Conveyor
has in Slurm, each linked to its task (``conveyor.worker.slurm.cluster``).  It reads
Slurm from the API's host (``CONVEYOR_SLURM_API``: the Slurm commands by default, or
slurmrestd); where it cannot, it says why and shows what the Slurm executors report
with their heartbeats.  Viewers whose tasks are their own (submitters, developers) see
the partitions and nodes, not other people's jobs.
"""

from __future__ import annotations

import os
import shutil

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from conveyor.service import ConveyorService
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, owner_filter, require

from . import live
from .helpers import ConsoleRoute, call, page
from .render import PREFIX, env

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

# the nav shows the page where this host can reach Slurm or says how it should
env.globals["cluster_page"] = bool(os.environ.get("CONVEYOR_SLURM_API") or shutil.which("squeue"))


@router.get("/cluster")
async def cluster_page(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.WORKERS_READ),
) -> Response:
    from conveyor.worker.slurm.cluster import snapshot

    snap = await call(snapshot)
    executors = [
        w
        for w in await call(service.workers)
        if isinstance(w.capabilities.get("slurm"), dict) and "task_job" not in w.capabilities
    ]
    own = owner_filter(principal) is not None
    return await page(
        request,
        "cluster.html",
        section="cluster",
        sse_url=live.stream_url("nav"),
        snap=snap,
        jobs=[] if own else snap.jobs,
        jobs_hidden=own,
        executors=executors,
    )
