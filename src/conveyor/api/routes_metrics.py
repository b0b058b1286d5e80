"""``GET /metrics`` in the Prometheus text format (see ``conveyor.api.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from conveyor.web.security import Permission, require

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[require(Permission.METRICS_READ)],
)
def metrics(request: Request) -> Response:
    """A plain ``def``: FastAPI runs it in a thread, so the backend reads never block the loop."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
