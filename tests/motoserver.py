"""A throwaway ``moto_server`` (SQS + DynamoDB) for the AWS backend tests.

Started on first use, on 127.0.0.1 and a free port, by ``moto_atomic.py``
(moto's own server with DynamoDB's writes serialised, as on AWS); stopped by its PID when the test
process exits.  Dummy credentials and a region are set in *this* process's
environment only (never in ``src``).  When it cannot start, the test skips,
or fails under ``CI=true`` (CI never passes by skipping).

Every contract test gets fresh resources: a new table pair and queue pair
with a unique suffix (moto creates them in milliseconds).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REGION = "us-east-1"

_lock = threading.Lock()
_server: MotoServer | None = None
_error: str | None = None


class MotoServer:
    def __init__(self, proc: subprocess.Popen[bytes], endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def backend_url(self, suffix: str | None = None, *, max_receives: int | None = None) -> str:
        """An ``aws://`` URL on fresh resources (created by ``ensure_resources``)."""
        from conveyor.backends.aws.resources import DEFAULT_MAX_RECEIVES, ensure_resources

        suffix = suffix or uuid.uuid4().hex[:12]
        name = f"conveyor-{suffix}"
        queue_url = ensure_resources(
            table=name,
            queue_name=name,
            region=REGION,
            endpoint_url=self.endpoint,
            max_receives=max_receives or DEFAULT_MAX_RECEIVES,
        )
        query = urlencode(
            {"queue_url": queue_url, "table": name, "region": REGION, "endpoint_url": self.endpoint}
        )
        return f"aws://?{query}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command() -> list[str] | None:
    """moto's server through ``moto_atomic.py`` (DynamoDB writes serialised as on AWS)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, str(Path(__file__).with_name("moto_atomic.py"))]


def _set_test_credentials() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_SESSION_TOKEN", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def _start() -> MotoServer:
    command = _command()
    if command is None:
        raise RuntimeError("moto's server not found: pip install 'moto[server]'")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(proc, endpoint)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                pass
            atexit.register(server.stop)
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("moto_server did not answer within 30s")


def get_server() -> MotoServer:
    """The shared server, started on first use (raises RuntimeError if it cannot)."""
    global _server, _error
    with _lock:
        if _server is None:
            if _error is not None:
                raise RuntimeError(_error)
            _set_test_credentials()
            try:
                _server = _start()
            except (RuntimeError, OSError) as exc:
                _error = str(exc)
                raise RuntimeError(_error) from exc
        return _server


def require_server() -> MotoServer:
    """``get_server()``, or skip the test (fail it under CI=true)."""
    try:
        return get_server()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
