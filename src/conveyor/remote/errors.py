"""Reading an API error answer: ``{"error": {"code", "message"}}`` (``conveyor.api.errors``
writes it), for every client of the API.

:func:`read_error` is the one decoder: the CLI's client raises its ``ClientError``
from it, and a remote worker's connection turns it into the domain error the local
engines raise (:func:`domain_error`: ``LeaseLost`` for a 409 ``lease_lost``,
``ObjectNotFound``, ``InvalidKey`` ...), so the worker loop and the processors cannot
tell the engines apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from conveyor.errors import (
    Conflict,
    ConveyorError,
    InvalidKey,
    InvalidRequest,
    LeaseLost,
    NotFound,
    ObjectNotFound,
    PayloadTooLarge,
    RemoteUnavailable,
    TaskNotFound,
    WorkerCredentialRejected,
)

_BY_CODE: dict[str, type[ConveyorError]] = {
    "lease_lost": LeaseLost,
    "conflict": Conflict,
    "task_not_found": TaskNotFound,
    "object_not_found": ObjectNotFound,
    "not_found": NotFound,
    "invalid_key": InvalidKey,
    "payload_too_large": PayloadTooLarge,
}


@dataclass(frozen=True)
class ApiError:
    """What an error answer says: its status, the error's code and message."""

    status: int
    code: str
    message: str


def read_error(resp: httpx.Response) -> ApiError:
    """The error an answer carries; a body that is not the API's error document (a
    proxy's page, say) is ``http_error`` with the start of its text."""
    try:
        err = resp.json()["error"]
        code, message = str(err.get("code", "error")), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "http_error", resp.text[:300]
    return ApiError(resp.status_code, code, message)


def domain_error(resp: httpx.Response) -> ConveyorError:
    """The domain error an API error answer stands for (a remote worker's view: a 401 or
    403 is its credential refused)."""
    e = read_error(resp)
    status, code, message = e.status, e.code, e.message
    if status in (401, 403):
        return WorkerCredentialRejected(
            f"the API refused this worker's credential ({status} {code}): {message}"
        )
    if code in _BY_CODE:
        return _BY_CODE[code](message)
    if status in (400, 422):
        return InvalidRequest(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status >= 500:
        return RemoteUnavailable(f"the API answered {status} {code}: {message}")
    return ConveyorError(f"the API answered {status} {code}: {message}")
