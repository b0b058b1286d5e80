"""Every error leaves the API as ``{"error": {"code", "message"}}``.

* domain errors (:class:`ConveyorError`) with their own status and code;
  validation errors as 422 ``invalid_request``; Starlette's 404/405;
* an outage of the database or object storage (see
  :func:`conveyor.infra_errors.is_infrastructure_error`) as 503
  ``unavailable`` with ``Retry-After``;
* anything else as 500 ``internal`` with the request id, logged with its
  traceback.

The last two are turned into responses by :class:`RequestContextMiddleware`,
the outermost of our middlewares, and never reach Starlette's
``ServerErrorMiddleware``: that one answers with plain text and re-raises,
and uvicorn then closes the kept-alive connection. Here the exception ends
in a normal response, so the client's connection stays usable. (A streamed
response that fails after its first bytes is sent cannot be turned into an
error any more; that one still ends its connection.)

Every response carries ``X-Request-ID``: the caller's, when it sent a sane
one, else a new one. 5xx bodies name it too, and the log line says it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.errors import ConveyorError, ServiceUnavailable
from conveyor.infra_errors import is_infrastructure_error

log = logging.getLogger("conveyor.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "X-Request-ID"
# what we accept from a caller (a proxy's or client's id): short, printable, no spaces
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
RETRY_AFTER_S = 5  # an outage: a PostgreSQL restart takes seconds, an S3 blip as long

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


def request_id_of(scope_or_request: Scope | Request) -> str | None:
    """The id :class:`RequestContextMiddleware` gave this request (None outside it)."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    state = scope.get("state")
    value = state.get("request_id") if isinstance(state, dict) else None
    return value if isinstance(value, str) else None


def _what_is_down(exc: BaseException) -> str:
    """'the database' / 'object storage' / 'a service', from the exception's chain."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            break
        modules = " ".join(cls.__module__ or "" for cls in type(current).__mro__)
        if "psycopg" in modules or "sqlite3" in modules:
            return "the database"
        if "botocore" in modules or "boto3" in modules or "s3transfer" in modules:
            return "object storage"
        current = current.__cause__ or current.__context__
    return "a service this API depends on"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def unhandled_response(exc: BaseException, request_id: str, scope: Scope) -> JSONResponse:
    """The response for an exception no handler took: 503 for an outage, else 500.

    Logged here: an outage as one warning line (a database restart would
    otherwise flood the log with tracebacks; the traceback is at DEBUG), any
    other error with its traceback.
    """
    where = f"{scope.get('method', '')} {scope.get('path', '')}"
    leaves = _leaves(exc)
    if all(is_infrastructure_error(leaf) for leaf in leaves):
        first = leaves[0]
        what = _what_is_down(first)
        log.warning(
            "Answered 503: %s is unavailable on %s [request_id=%s]: %s: %s",
            what,
            where,
            request_id,
            type(first).__name__,
            str(first).strip().splitlines()[0] if str(first).strip() else "",
        )
        log.debug("outage traceback [request_id=%s]", request_id, exc_info=exc)
        response = error_response(
            503,
            ServiceUnavailable.code,
            f"{what} is unavailable; try again in a few seconds",
            request_id=request_id,
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    log.error("Unhandled error on %s [request_id=%s]", where, request_id, exc_info=exc)
    return error_response(
        500,
        "internal",
        f"internal error; the server log has the details under request id {request_id}",
        request_id=request_id,
    )


class RequestContextMiddleware:
    """Outermost: a request id for every HTTP request, and no exception escapes as plain text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _incoming(scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                try:
                    text = bytes(value).decode("ascii")
                except UnicodeDecodeError:
                    return None
                return text if _SANE_REQUEST_ID.match(text) else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._incoming(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        if isinstance(state, dict):
            state["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER.lower() not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # a streamed response broke half-way: nothing sane left to send
                raise
            response = unhandled_response(exc, request_id, scope)
            await response(scope, receive, send_with_id)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConveyorError)
    async def _conveyor(request: Request, exc: ConveyorError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if exc.http_status >= 500:
            rid = request_id_of(request)
            if rid:
                extra["request_id"] = rid
        response = error_response(exc.http_status, exc.code, exc.message, **extra)
        response.headers.update(exc.http_headers)
        if exc.http_status == 503 and "retry-after" not in response.headers:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
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
