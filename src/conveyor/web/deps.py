"""Request-scoped access to the service; routes never build their own."""

from __future__ import annotations

from fastapi import Request

from conveyor.service import ConveyorService


def get_service(request: Request) -> ConveyorService:
    service: ConveyorService = request.app.state.service
    return service
