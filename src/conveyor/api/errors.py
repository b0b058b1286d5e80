"""Every error leaves the API as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.errors import ConveyorError

_EXAMPLE = (
    '{"input_bucket": "input", "input_key": "video.mp4", "transcode_types": ["mp4_standard"]}'
)


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status)


def _describe(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()
    if kind == "missing" and not loc:
        return f"request body is empty: send a JSON object such as {_EXAMPLE}"
    if kind == "model_attributes_type" or (kind == "dict_type" and not loc):
        return f"request body must be a JSON object such as {_EXAMPLE}"
    where = ".".join(loc) or "request"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConveyorError)
    async def _conveyor(_: Request, exc: ConveyorError) -> JSONResponse:
        response = error_response(exc.http_status, exc.code, exc.message)
        response.headers.update(exc.http_headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return error_response(422, "invalid_request", _describe(errors), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))
