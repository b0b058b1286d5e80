"""Domain errors.

Every error a user can cause carries a stable ``code`` and a readable message;
the faces map them to HTTP statuses or CLI exit codes without knowing why
they were raised.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class: ``code`` is machine-readable, ``str(err)`` is for people."""

    code = "error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers a face answering with this error should send (none by default)."""
        return {}


class InvalidRequest(ConveyorError):
    code = "invalid_request"
    http_status = 400


class InvalidKey(InvalidRequest):
    code = "invalid_key"


class UnknownKind(InvalidRequest):
    code = "unknown_kind"


class InvalidParams(InvalidRequest):
    code = "invalid_params"


class NotFound(ConveyorError):
    code = "not_found"
    http_status = 404


class TaskNotFound(NotFound):
    code = "task_not_found"


class ObjectNotFound(NotFound):
    code = "object_not_found"


class Conflict(ConveyorError):
    """The request is valid but the task is in a state that forbids it."""

    code = "conflict"
    http_status = 409


class PayloadTooLarge(ConveyorError):
    code = "payload_too_large"
    http_status = 413


class LeaseLost(ConveyorError):
    """A worker acted on a task whose lease it no longer holds (fencing)."""

    code = "lease_lost"
    http_status = 409


class WorkerCredentialRejected(ConveyorError):
    """The API refused a remote worker's credential (revoked, expired or unknown).

    Retrying cannot help: the worker stops and says so, and an operator
    enrolls it again.
    """

    code = "credential_rejected"
    http_status = 401


class RemoteUnavailable(ConveyorError):
    """A remote worker could not reach the API, even after retrying."""

    code = "api_unreachable"
    http_status = 503


class ServiceUnavailable(ConveyorError):
    """A store the service depends on (database, object storage) is down or refusing.

    Not the caller's fault and not permanent: the API answers 503 with
    ``Retry-After`` (``retry_after`` seconds), and a client should try again.
    ``conveyor.infra_errors.is_infrastructure_error`` tells which driver
    exceptions mean this.
    """

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ProcessorError(ConveyorError):
    """A processor could not finish a task.

    ``retryable`` says whether another attempt could succeed: a corrupt input
    will not get better, a crashed encoder might.
    """

    code = "processing_failed"

    def __init__(self, message: str, *, retryable: bool = True, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        if code:
            self.code = code


class InputRejected(ProcessorError):
    """The input is not something this processor can ever handle."""

    code = "invalid_input"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class TaskCancelled(ConveyorError):
    code = "cancelled"


class Unauthenticated(ConveyorError):
    """No credential, or one that is unknown, expired or revoked."""

    code = "unauthenticated"
    http_status = 401


class Forbidden(ConveyorError):
    """A known caller whose role does not allow this action."""

    code = "forbidden"
    http_status = 403


class RateLimited(ConveyorError):
    """Too many attempts; ``retry_after`` seconds is when the next one is let through."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}  # clients and proxies back off by it
