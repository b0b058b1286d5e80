"""The remote worker's side of enrollment: enroll once, keep the credential 0600, rotate, stop.

Also issue #8's third acceptance point as far as this branch can show it: a
worker process joined with an enrollment token, with only the API URL,
transcodes a task end to end while the worker protocol requires its
credential (local storage streamed through the API).

The server side of enrollment (``POST /api/workers/enroll`` and
``/api/workers/rotate``, the token store, revocation) is built on another
branch of issue #8 and does not exist here.  These tests therefore run the
real worker client against a small test double of exactly that HTTP
contract (:class:`EnrollmentDouble`), mounted on a real API whose one worker
auth seam (``worker_principal``) is overridden to check the double's
credentials: a peer we cannot otherwise have on this branch, not a stand-in
for the code under test (the CLI, the credential file, rotation and the
worker's reaction to a revoked credential all run for real).
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.api.routes_worker import WorkerPrincipal, worker_principal
from conveyor.api_connection import ApiConnection
from conveyor.backends.remote import RemoteBackend
from conveyor.errors import WorkerCredentialRejected
from conveyor.models import WorkerInfo
from conveyor.worker.credential import (
    CredentialKeeper,
    enroll,
    read_credential_file,
    write_credential_file,
)
from tests.apiserver import ApiServer, start_api
from tests.conftest import FAST_ENV, start_process, wait_task

WORKER_ENV = {**FAST_ENV, "CONVEYOR_ENCODER": "cpu"}
_bearer = HTTPBearer(auto_error=False)


class EnrollmentDouble:
    """One-time tokens, credentials with a lifetime, rotation that revokes the old one."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.tokens: set[str] = set()
        self.creds: dict[str, str] = {}  # credential -> worker id
        self.revoked: set[str] = set()
        self.enrolls = 0
        self.rotations = 0
        self.lock = threading.Lock()

    def token(self) -> str:
        t = secrets.token_urlsafe(16)
        self.tokens.add(t)
        return t

    def _issue(self, worker_id: str) -> dict[str, Any]:
        cred = secrets.token_urlsafe(24)
        self.creds[cred] = worker_id
        expires = datetime.now(UTC) + timedelta(seconds=self.lifetime_s)
        return {"worker_id": worker_id, "credential": cred, "expires_at": expires.isoformat()}

    def revoke_worker(self, worker_id: str) -> None:
        with self.lock:
            self.revoked |= {c for c, w in self.creds.items() if w == worker_id}

    def check(self, credential: str | None) -> str:
        with self.lock:
            if credential is None or credential in self.revoked or credential not in self.creds:
                raise WorkerCredentialRejected("worker credential unknown or revoked")
            return self.creds[credential]

    def install(self, app: FastAPI) -> None:
        refused = JSONResponse(
            {"error": {"code": "unauthorized", "message": "token unknown or already used"}},
            status_code=401,
        )

        @app.post("/api/workers/enroll")
        async def enroll_route(body: dict[str, Any]) -> Any:
            with self.lock:
                if body.get("token") not in self.tokens:
                    return refused
                self.tokens.discard(body["token"])
                self.enrolls += 1
                return self._issue(f"{body.get('name') or 'worker'}-{self.enrolls}")

        @app.post("/api/workers/rotate")
        async def rotate_route(request: Request) -> Any:
            cred = request.headers.get("authorization", "").removeprefix("Bearer ")
            worker_id = self.check(cred)
            with self.lock:
                self.revoked.add(cred)
                self.rotations += 1
                return self._issue(worker_id)

        def principal(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> WorkerPrincipal:
            wid = self.check(credentials.credentials if credentials else None)
            return WorkerPrincipal(name=wid, worker_id=wid)

        app.dependency_overrides[worker_principal] = principal


def api_with(double: EnrollmentDouble, workdir: Path) -> ApiServer:
    return start_api(workdir, configure=double.install)


@pytest.fixture
def double_api(tmp_path: Path) -> Iterator[tuple[EnrollmentDouble, ApiServer]]:
    double = EnrollmentDouble(lifetime_s=3600)
    api = api_with(double, tmp_path / "api")
    yield double, api
    api.stop()


def start_worker(tmp_path: Path, tag: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    data = tmp_path / "gpu-host"
    data.mkdir(exist_ok=True)
    log = tmp_path / f"worker-{tag}.log"
    proc = start_process(["worker", "--data-dir", str(data), *args], data, log, WORKER_ENV)
    return proc, log


def wait_heartbeat(api: ApiServer, worker_id: str, after: datetime, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        for w in api.service.backend.workers():
            if w.id == worker_id and w.last_seen > after:
                return
        time.sleep(0.1)
    raise AssertionError(f"no heartbeat from {worker_id}:\n{log.read_text(errors='replace')}")


def test_worker_enrolls_once_keeps_a_0600_credential_and_stops_when_revoked(
    double_api: tuple[EnrollmentDouble, ApiServer], tmp_path: Path, small_clip: Path
) -> None:
    double, api = double_api
    cred_file = tmp_path / "home" / ".config" / "conveyor" / "worker.json"
    token = double.token()
    join = ["--join", api.url, "--credential-file", str(cred_file)]

    # first start: exchange the token, store the credential, heartbeat with it
    t0 = datetime.now(UTC)
    proc, log = start_worker(tmp_path, "enroll", *join, "--enroll", token, "--name", "gpu-a")
    wait_heartbeat(api, "gpu-a-1", t0, proc, log)
    assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
    stored = json.loads(cred_file.read_text())
    assert stored["api"] == api.url and stored["worker_id"] == "gpu-a-1"
    assert double.check(stored["credential"]) == "gpu-a-1"
    assert datetime.fromisoformat(stored["expires_at"]) > datetime.now(UTC)
    proc.terminate()
    assert proc.wait(30) == 0

    # later starts only read the file: no second enrollment
    t1 = datetime.now(UTC)
    proc, log = start_worker(tmp_path, "again", *join)
    wait_heartbeat(api, "gpu-a-1", t1, proc, log)
    assert double.enrolls == 1

    # with auth on the worker protocol, the joined worker transcodes end to end,
    # its files streamed through the API
    http = httpx.Client(base_url=api.url, timeout=30)
    assert http.put("/api/files/input/joined.mp4", content=small_clip.read_bytes()).is_success
    r = http.post(
        "/api/queue/add",
        json={"input_bucket": "input", "input_key": "joined.mp4", "transcode_types": ["thumbnail"]},
    )
    task = wait_task(http, r.json()["task_id"], timeout=120)
    assert task["status"] == "completed", log.read_text(errors="replace")
    assert task["worker_id"] == "gpu-a-1"
    out = task["outputs"][0]
    assert (tmp_path / "api" / "buckets" / out["bucket"] / out["key"]).stat().st_size == out["size"]
    # and without the credential the worker protocol is closed
    anon = http.post(
        "/api/worker/v1/heartbeat", json={"worker": {"id": "x"}, "leases": [], "lease_s": 5}
    )
    assert anon.status_code == 401

    # a revoked credential stops the worker at its next heartbeat, with a clear line
    double.revoke_worker("gpu-a-1")
    code = proc.wait(30)
    text = log.read_text(errors="replace")
    assert code == 3, text
    assert "credential" in text and "Enroll it again" in text

    # the same token again is refused, and nothing is written
    other = tmp_path / "other.json"
    proc, log = start_worker(
        tmp_path, "replay", "--join", api.url, "--credential-file", str(other), "--enroll", token
    )
    assert proc.wait(60) == 2
    assert "enrollment refused" in log.read_text(errors="replace")
    assert not other.exists()

    # neither the token nor the credential ever reached a log
    for path in tmp_path.glob("worker-*.log"):
        text = path.read_text(errors="replace")
        assert token not in text and stored["credential"] not in text, path.name


def test_rotation_rewrites_the_credential_file_atomically(tmp_path: Path) -> None:
    double = EnrollmentDouble(lifetime_s=0.9)
    api = api_with(double, tmp_path / "api")
    path = tmp_path / "cfg" / "worker.json"
    try:
        first = enroll(ApiConnection(api.url), double.token(), "rot")
        write_credential_file(path, first)
        keeper = CredentialKeeper(path, first)
        conn = ApiConnection(api.url, credential=keeper.current)
        seen: set[str] = set()
        torn: list[str] = []
        stop = threading.Event()

        def reader() -> None:  # a concurrent reader never sees half a file
            while not stop.is_set():
                text = path.read_text()
                try:
                    seen.add(json.loads(text)["credential"])
                except ValueError:
                    torn.append(text)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        keeper.start(conn)
        deadline = time.monotonic() + 15
        while double.rotations < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        keeper.stop()
        stop.set()
        t.join(5)

        assert double.rotations >= 3
        assert torn == []
        assert len(seen) >= 2
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["worker.json"]  # no temp left
        current = read_credential_file(path)
        assert current.credential == keeper.current()
        # the file's credential works; the first one was revoked by rotation
        info = WorkerInfo(id="rot-1")
        assert RemoteBackend(conn).heartbeat(info, [], 30).lost == []
        with pytest.raises(WorkerCredentialRejected):
            RemoteBackend(ApiConnection(api.url, credential=first.credential)).heartbeat(
                info, [], 30
            )
    finally:
        api.stop()
