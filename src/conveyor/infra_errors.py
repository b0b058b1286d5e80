"""Which exceptions mean "the infrastructure is down", not "this request or task is bad".

One rule for every face and the worker:

* the API answers such an error with 503 + ``Retry-After`` (``unavailable``),
  not 500;
* the worker retries the call in place with bounded back-off and, if the
  attempt still fails because of it, hands the task back without counting
  the attempt against ``max_attempts``.

So the list must hold only errors that say nothing about the task itself: a
connection refused, reset or timed out, a server shutting down, a lock held
too long, a 5xx or a throttle from S3 or DynamoDB. A missing object (404),
a permission error (403), a constraint violation or a bug (``KeyError``)
are not infrastructure errors, however they came about.

Drivers are optional (a worker may have neither psycopg nor boto3
installed), so nothing here imports one: classes are recognised by the
module and name of the classes in the exception's MRO.
"""

from __future__ import annotations

import errno

from conveyor.errors import ConveyorError, RemoteUnavailable, ServiceUnavailable

# errno values of network failures (not "no such file", not "permission denied")
_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EPIPE",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "ENOTCONN",
        "ESHUTDOWN",
        "EADDRNOTAVAIL",
    )
    if hasattr(errno, name)
)

# (module prefix, class name) pairs: an exception is an outage when any class of
# its MRO matches. Module prefixes so that private modules (``httpx._exceptions``)
# and vendored copies (``botocore.vendored...urllib3``) are covered.
_OUTAGE_CLASSES: tuple[tuple[str, frozenset[str]], ...] = (
    # psycopg (3): every OperationalError (AdminShutdown after a server
    # restart, "connection is closed", connection refused, too many connections,
    # lock timeout, serialization failure, disk full), psycopg_pool's PoolTimeout
    # (a subclass); InterfaceError is a programming error, not listed
    ("psycopg", frozenset({"OperationalError"})),
    # botocore: no connection (EndpointConnectionError, ConnectTimeoutError,
    # ProxyConnectionError) and a broken one (ConnectionClosedError, ReadTimeoutError,
    # ResponseStreamingError, IncompleteReadError)
    (
        "botocore.exceptions",
        frozenset({"ConnectionError", "HTTPClientError", "IncompleteReadError"}),
    ),
    # urllib3 (what botocore and requests sit on)
    (
        "urllib3",
        frozenset({"ProtocolError", "TimeoutError", "NewConnectionError", "MaxRetryError"}),
    ),
    (
        "botocore.vendored",
        frozenset({"ProtocolError", "TimeoutError", "ConnectionError", "RequestError"}),
    ),
    # httpx (the remote worker's engine and the CLI): not UnsupportedProtocol or
    # LocalProtocolError, which are our own mistakes
    (
        "httpx",
        frozenset({"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"}),
    ),
    ("httpcore", frozenset({"TimeoutException", "NetworkError", "RemoteProtocolError"})),
)

# sqlite3.OperationalError covers bugs too ("no such table", syntax errors): only these
_SQLITE_OUTAGE = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "disk i/o error",
    "unable to open database file",
    "database or disk is full",
)

# S3 / DynamoDB / SQS answers that mean "busy or broken, try again" (any 5xx counts too)
_RETRYABLE_AWS_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailableException",
    }
)

_MAX_CHAIN = 16


def _mro_names(exc: BaseException) -> list[tuple[str, str]]:
    return [(cls.__module__ or "", cls.__name__) for cls in type(exc).__mro__]


def _is_outage(exc: BaseException) -> bool:
    """``exc`` alone, without its cause or context."""
    if isinstance(exc, ServiceUnavailable | RemoteUnavailable):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):  # builtins: refused, reset, broken pipe
        return True
    names = _mro_names(exc)
    for module, name in names:
        for prefix, classes in _OUTAGE_CLASSES:
            if name in classes and (module == prefix or module.startswith(prefix + ".")):
                return True
        if module == "socket" and name == "gaierror":  # DNS: the host is not reachable now
            return True
        if module == "sqlite3" and name == "OperationalError":
            text = str(exc).lower()
            return any(marker in text for marker in _SQLITE_OUTAGE)
        if module == "botocore.exceptions" and name == "ClientError":
            return _aws_retryable(exc)
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def _aws_retryable(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    error = response.get("Error") or {}
    code = str(error.get("Code", "")) if isinstance(error, dict) else ""
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode", 0) if isinstance(meta, dict) else 0
    try:
        status = int(status or 0)
    except (TypeError, ValueError):
        status = 0
    return code in _RETRYABLE_AWS_CODES or status >= 500 or code in {"500", "502", "503", "504"}


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when ``exc`` means a database, object store or API we depend on is unavailable.

    Recognised (without importing any driver):

    * ``conveyor.errors.ServiceUnavailable`` and ``RemoteUnavailable``;
    * psycopg's ``OperationalError`` and its subclasses (``AdminShutdown`` after
      ``pg_ctl restart``, "the connection is closed", ``psycopg_pool.PoolTimeout``,
      lock and statement timeouts, serialization failures, too many connections);
    * sqlite3's ``OperationalError`` when it says the database is locked, busy,
      cannot be opened, is full or had a disk I/O error (not "no such table");
    * botocore's connection errors (``EndpointConnectionError``,
      ``ConnectTimeoutError``, ``ConnectionClosedError``, ``ReadTimeoutError``,
      ``ResponseStreamingError``, ``IncompleteReadError``) and a ``ClientError``
      whose status is 5xx or whose code is a throttle (``SlowDown``,
      ``ThrottlingException``, ``ProvisionedThroughputExceededException``, ...);
      a 4xx (``NoSuchKey``, ``AccessDenied``) is not one;
    * urllib3's and httpx's/httpcore's transport errors (connect, read and
      pool timeouts, network errors, the server closing the connection), not
      their "unsupported protocol" or local protocol errors;
    * the builtins ``ConnectionError`` (refused, reset, aborted, broken pipe),
      ``TimeoutError`` (what a socket timeout raises; code that times out a
      job of its own should raise something else), ``socket.gaierror`` and an
      ``OSError`` whose errno is a network one.

    The exception's ``__cause__`` and ``__context__`` are followed (so a
    ``boto3`` ``S3UploadFailedError`` raised while handling a 503, or a
    ``RuntimeError`` raised ``from`` a reset connection, counts), but a
    :class:`conveyor.errors.ConveyorError` stops the walk: a domain error is
    a verdict already given (``ObjectNotFound``, ``LeaseLost``, a processor's
    ``InputRejected``), and code that means "outage" raises
    ``ServiceUnavailable``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(_MAX_CHAIN):
        if current is None or id(current) in seen:
            return False
        seen.add(id(current))
        if _is_outage(current):
            return True
        if isinstance(current, ConveyorError):
            return False
        nxt = current.__cause__
        if nxt is None and not current.__suppress_context__:
            nxt = current.__context__
        current = nxt
    return False


__all__ = ["is_infrastructure_error"]
