"""``is_infrastructure_error``: real exceptions from the real drivers, made the way they happen.

Connections go to a port nobody listens on (refused at once) or to a socket
that accepts and never answers (read timeouts); database locks are taken by a
second SQLite connection. Nothing is mocked: what the drivers raise in these
tests is what they raise in production.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.errors import (
    InputRejected,
    LeaseLost,
    ObjectNotFound,
    ProcessorError,
    RemoteUnavailable,
    ServiceUnavailable,
)
from conveyor.infra_errors import is_infrastructure_error
from tests.conftest import free_port


def raised(fn: Callable[[], object]) -> BaseException:
    """The exception ``fn`` raises (it must raise one)."""
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn} raised nothing")


@pytest.fixture
def closed_port() -> int:
    return free_port()  # bound once and released: connecting is refused


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A socket that accepts connections (the kernel does, from the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


# -- PostgreSQL -----------------------------------------------------------------------
def test_psycopg_connection_refused(closed_port: int) -> None:
    import psycopg

    exc = raised(lambda: psycopg.connect(f"postgresql://x@127.0.0.1:{closed_port}/x"))
    assert isinstance(exc, psycopg.OperationalError)
    assert is_infrastructure_error(exc)


def test_psycopg_admin_shutdown_and_closed_connection() -> None:
    import psycopg
    from psycopg import errors

    # what the first use of a pooled connection raises after `pg_ctl restart -m fast`
    shutdown = errors.AdminShutdown("terminating connection due to administrator command")
    assert is_infrastructure_error(shutdown)
    assert is_infrastructure_error(errors.CannotConnectNow("the database system is starting up"))
    assert is_infrastructure_error(psycopg.OperationalError("the connection is closed"))
    assert is_infrastructure_error(errors.LockNotAvailable("canceling statement: lock timeout"))
    assert is_infrastructure_error(errors.TooManyConnections("too many clients already"))


def test_psycopg_pool_timeout(closed_port: int) -> None:
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool: ConnectionPool = ConnectionPool(  # type: ignore[type-arg]
        f"postgresql://x@127.0.0.1:{closed_port}/x",
        min_size=0,
        max_size=1,
        open=True,
        reconnect_timeout=1,
    )
    try:
        exc = raised(lambda: pool.getconn(timeout=0.3))
    finally:
        pool.close(timeout=1)
    assert isinstance(exc, PoolTimeout)
    assert is_infrastructure_error(exc)


def test_psycopg_errors_that_are_not_outages() -> None:
    import psycopg
    from psycopg import errors

    assert not is_infrastructure_error(errors.UniqueViolation("duplicate key value"))
    assert not is_infrastructure_error(errors.UndefinedTable('relation "tasks" does not exist'))
    assert not is_infrastructure_error(psycopg.ProgrammingError("the query has 2 placeholders"))
    assert not is_infrastructure_error(psycopg.InterfaceError("bad use of the API"))


# -- SQLite -----------------------------------------------------------------------------
def test_sqlite_locked_is_an_outage_no_such_table_is_not(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        locked = raised(lambda: other.execute("INSERT INTO t VALUES (1)"))
        assert isinstance(locked, sqlite3.OperationalError)
        assert "locked" in str(locked)
        assert is_infrastructure_error(locked)
        holder.execute("ROLLBACK")
        missing = raised(lambda: other.execute("SELECT * FROM nowhere"))
        assert isinstance(missing, sqlite3.OperationalError)
        assert "no such table" in str(missing)
        assert not is_infrastructure_error(missing)
        syntax = raised(lambda: other.execute("SELEC 1"))
        assert not is_infrastructure_error(syntax)
        other.execute("CREATE UNIQUE INDEX tx ON t (x)")
        other.execute("INSERT INTO t VALUES (1)")
        integrity = raised(lambda: other.execute("INSERT INTO t VALUES (1)"))
        assert isinstance(integrity, sqlite3.IntegrityError)
        assert not is_infrastructure_error(integrity)
    finally:
        holder.close()
        other.close()
    cannot_open = raised(lambda: sqlite3.connect(tmp_path / "no" / "such" / "dir.db"))
    assert is_infrastructure_error(cannot_open)
    assert is_infrastructure_error(sqlite3.OperationalError("disk I/O error"))


# -- S3 (botocore) ------------------------------------------------------------------------
def _s3(endpoint: str, **config: object) -> object:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, **config),  # type: ignore[arg-type]
    )


def test_botocore_endpoint_connection_error(closed_port: int) -> None:
    from botocore.exceptions import EndpointConnectionError

    client = _s3(f"http://127.0.0.1:{closed_port}")
    exc = raised(lambda: client.head_object(Bucket="b", Key="k"))  # type: ignore[attr-defined]
    assert isinstance(exc, EndpointConnectionError)
    assert is_infrastructure_error(exc)


def test_botocore_read_timeout(silent_port: int) -> None:
    from botocore.exceptions import ReadTimeoutError

    client = _s3(f"http://127.0.0.1:{silent_port}", read_timeout=0.3, connect_timeout=1)
    exc = raised(lambda: client.list_buckets())  # type: ignore[attr-defined]
    assert isinstance(exc, ReadTimeoutError)
    assert is_infrastructure_error(exc)


def test_botocore_closed_and_client_errors() -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionClosedError, NoCredentialsError

    assert is_infrastructure_error(ConnectionClosedError(endpoint_url="http://s3:9000/b/k"))

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "PutObject",
        )

    assert is_infrastructure_error(client_error("SlowDown", 503))
    assert is_infrastructure_error(client_error("InternalError", 500))
    assert is_infrastructure_error(client_error("ProvisionedThroughputExceededException", 400))
    assert is_infrastructure_error(client_error("ThrottlingException", 400))
    assert not is_infrastructure_error(client_error("NoSuchKey", 404))
    assert not is_infrastructure_error(client_error("AccessDenied", 403))
    assert not is_infrastructure_error(client_error("ConditionalCheckFailedException", 400))
    assert not is_infrastructure_error(NoCredentialsError())

    # boto3's upload wraps the ClientError it handles: the 503 underneath still counts
    def upload(status: int) -> None:
        try:
            raise client_error("ServiceUnavailable" if status >= 500 else "AccessDenied", status)
        except ClientError as e:
            raise S3UploadFailedError(f"Failed to upload f to b/k: {e}")  # noqa: B904

    assert is_infrastructure_error(raised(lambda: upload(503)))
    assert not is_infrastructure_error(raised(lambda: upload(403)))


# -- HTTP (httpx, urllib3), sockets ----------------------------------------------------------
def test_httpx_transport_errors(closed_port: int, silent_port: int) -> None:
    import httpx

    refused = raised(lambda: httpx.get(f"http://127.0.0.1:{closed_port}/", timeout=2))
    assert isinstance(refused, httpx.ConnectError)
    assert is_infrastructure_error(refused)
    slow = raised(lambda: httpx.get(f"http://127.0.0.1:{silent_port}/", timeout=0.3))
    assert isinstance(slow, httpx.ReadTimeout)
    assert is_infrastructure_error(slow)
    assert is_infrastructure_error(httpx.RemoteProtocolError("Server disconnected"))
    unsupported = raised(lambda: httpx.get("ftp://127.0.0.1/x"))
    assert isinstance(unsupported, httpx.UnsupportedProtocol)
    assert not is_infrastructure_error(unsupported)
    request = httpx.Request("GET", "http://api/x")
    status = httpx.HTTPStatusError("404", request=request, response=httpx.Response(404))
    assert not is_infrastructure_error(status)


def test_urllib3_errors(closed_port: int) -> None:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", closed_port, retries=False, timeout=1)
    exc = raised(lambda: pool.request("GET", "/"))
    assert isinstance(exc, urllib3.exceptions.NewConnectionError)
    assert is_infrastructure_error(exc)
    assert is_infrastructure_error(urllib3.exceptions.ProtocolError("Connection aborted."))
    assert not is_infrastructure_error(urllib3.exceptions.LocationParseError("::"))


def test_sockets_and_oserrors(closed_port: int, tmp_path: Path) -> None:
    def connect() -> None:
        with socket.create_connection(("127.0.0.1", closed_port), timeout=2):
            pass

    refused = raised(connect)
    assert isinstance(refused, ConnectionRefusedError)
    assert is_infrastructure_error(refused)
    assert is_infrastructure_error(BrokenPipeError(32, "Broken pipe"))
    assert is_infrastructure_error(TimeoutError("timed out"))
    assert is_infrastructure_error(OSError(113, "No route to host"))  # EHOSTUNREACH
    assert not is_infrastructure_error(raised(lambda: (tmp_path / "missing").read_bytes()))
    assert not is_infrastructure_error(PermissionError(13, "Permission denied"))
    assert not is_infrastructure_error(OSError("something else"))


# -- our own errors, chains --------------------------------------------------------------------
def test_conveyor_errors() -> None:
    assert is_infrastructure_error(ServiceUnavailable("database unavailable"))
    assert is_infrastructure_error(RemoteUnavailable("API unreachable"))
    assert not is_infrastructure_error(LeaseLost("lease lost"))
    assert not is_infrastructure_error(ObjectNotFound("gone"))
    assert not is_infrastructure_error(ProcessorError("ffmpeg crashed"))
    for exc in (KeyError("x"), ValueError("bad"), RuntimeError("bug"), AssertionError()):
        assert not is_infrastructure_error(exc)


def test_chains(closed_port: int) -> None:
    def wrapped() -> None:
        try:
            with socket.create_connection(("127.0.0.1", closed_port), timeout=2):
                pass
        except OSError as exc:
            raise RuntimeError("upload failed") from exc

    assert is_infrastructure_error(raised(wrapped))

    def implicit() -> None:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise ValueError("while reading the reply")  # noqa: B904

    assert is_infrastructure_error(raised(implicit))

    def suppressed() -> None:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise ValueError("not about the connection") from None

    assert not is_infrastructure_error(raised(suppressed))

    def verdict() -> None:  # a domain error raised over an outage is the domain's call
        try:
            raise ConnectionResetError(104, "reset")
        except ConnectionResetError as exc:
            raise InputRejected("not a video") from exc

    assert not is_infrastructure_error(raised(verdict))

    loop = RuntimeError("a")
    other = RuntimeError("b")
    loop.__context__ = other
    other.__context__ = loop
    assert not is_infrastructure_error(loop)


def test_imports_no_driver() -> None:
    code = (
        "import sys, conveyor.infra_errors\n"
        "drivers = ('psycopg', 'psycopg_pool', 'botocore', 'boto3', 'httpx', 'urllib3',"
        " 'sqlite3')\n"
        "print(','.join(m for m in drivers if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
