"""The API's schema and its viewers (``/openapi.json``, ``/docs``, ``/redoc``).

They follow the auth setting like every other route: open when auth is off,
and with auth on they need a token (or a console session) of any role but a
worker's.  Health probes stay the only routes that answer without one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from conveyor.web.security import Permission, require

router = APIRouter(include_in_schema=False, dependencies=[require(Permission.API_INFO)])

OPENAPI_URL = "/openapi.json"


@router.get(OPENAPI_URL)
async def openapi(request: Request) -> JSONResponse:
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL, title=f"{request.app.title} - API", oauth2_redirect_url=None
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - ReDoc")
