"""The remote worker's enrollment against the real API with auth on (issue #8).

A worker process joined with a one-time enrollment token, holding only the
API URL, keeps its credential in a 0600 file, transcodes a task end to end
(local storage streamed through the API), stops when an admin revokes its
credential, and rotates the credential file atomically before it expires.
The same token twice is refused.  Everything here is the real server side
(``conveyor.auth``: token store, enrollment signing, revocation).
"""

from __future__ import annotations

import json
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.errors import WorkerCredentialRejected
from conveyor.models import WorkerInfo
from conveyor.remote.connection import ApiConnection
from conveyor.remote.credential import (
    CredentialKeeper,
    enroll,
    read_credential_file,
    rotate,
    write_credential_file,
)
from conveyor.remote.queue import RemoteQueue
from tests.apiserver import ApiServer, start_api
from tests.conftest import FAST_ENV, start_process, wait_task

WORKER_ENV = {**FAST_ENV, "CONVEYOR_ENCODER": "cpu"}


def admin_client(api: ApiServer) -> httpx.Client:
    admin = api.service.auth.create_token("test-admin", "admin")
    return httpx.Client(
        base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {admin.token}"}
    )


def enrollment_token(admin: httpx.Client, **body: Any) -> str:
    r = admin.post("/api/workers/enrollment-tokens", json=body)
    assert r.status_code in (200, 201), r.text
    token: str = r.json()["token"]
    return token


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a worker process running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def auth_api(tmp_path: Path) -> Iterator[ApiServer]:
    api = start_api(tmp_path / "api", auth=True)
    yield api
    api.stop()


def start_worker(tmp_path: Path, tag: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    data = tmp_path / "gpu-host"
    data.mkdir(exist_ok=True)
    log = tmp_path / f"worker-{tag}.log"
    proc = start_process(["worker", "--data-dir", str(data), *args], data, log, WORKER_ENV)
    _started.append(proc)
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
    auth_api: ApiServer, tmp_path: Path, small_clip: Path
) -> None:
    api = auth_api
    http = admin_client(api)
    cred_file = tmp_path / "home" / ".config" / "conveyor" / "worker.json"
    token = enrollment_token(http, name="gpu-a")
    join = ["--join", api.url, "--credential-file", str(cred_file)]

    # first start: exchange the token, store the credential, heartbeat with it
    t0 = datetime.now(UTC)
    proc, log = start_worker(tmp_path, "enroll", *join, "--enroll", token, "--name", "gpu-a")
    wait_heartbeat(api, "gpu-a", t0, proc, log)
    assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
    stored = json.loads(cred_file.read_text())
    assert stored["api"] == api.url and stored["worker_id"] == "gpu-a"
    assert api.service.auth.authenticate(stored["credential"]).worker_id == "gpu-a"
    assert datetime.fromisoformat(stored["expires_at"]) > datetime.now(UTC)
    proc.terminate()
    assert proc.wait(30) == 0

    # later starts only read the file: no second enrollment
    t1 = datetime.now(UTC)
    proc, log = start_worker(tmp_path, "again", *join)
    wait_heartbeat(api, "gpu-a", t1, proc, log)
    workers = [t for t in api.service.auth.list_tokens() if t.worker_id == "gpu-a"]
    assert len(workers) == 1  # one credential: the token was exchanged once

    # with auth on the worker protocol, the joined worker transcodes end to end,
    # its files streamed through the API
    assert http.put("/api/files/input/joined.mp4", content=small_clip.read_bytes()).is_success
    r = http.post(
        "/api/queue/add",
        json={"input_bucket": "input", "input_key": "joined.mp4", "transcode_types": ["thumbnail"]},
    )
    task = wait_task(http, r.json()["task_id"], timeout=120)
    assert task["status"] == "completed", log.read_text(errors="replace")
    assert task["worker_id"] == "gpu-a"
    out = task["outputs"][0]
    assert (tmp_path / "api" / "buckets" / out["bucket"] / out["key"]).stat().st_size == out["size"]
    # and without a worker credential the worker protocol is closed: 401 with no
    # token, 403 for an admin (the admin role does not hold worker:protocol)
    beat = {"worker": {"id": "x"}, "leases": [], "lease_s": 5}
    assert httpx.post(f"{api.url}/api/worker/v1/heartbeat", json=beat).status_code == 401
    assert http.post("/api/worker/v1/heartbeat", json=beat).status_code == 403

    # a revoked credential stops the worker at its next heartbeat, with a clear line
    assert http.delete("/api/workers/gpu-a/credential").is_success
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


def rotations(api: ApiServer) -> int:
    return sum(
        1
        for t in api.service.auth.list_tokens()
        if t.worker_id == "rot" and (t.created_by or "").startswith("rotate:")
    )


def test_rotation_rewrites_the_credential_file_atomically(tmp_path: Path) -> None:
    api = start_api(tmp_path / "api", auth=True, worker_credential_ttl=4.0)
    path = tmp_path / "cfg" / "worker.json"
    try:
        first = enroll(ApiConnection(api.url), enrollment_token(admin_client(api)), "rot")
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
        while rotations(api) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        keeper.stop()
        stop.set()
        t.join(5)

        assert rotations(api) >= 2
        assert torn == []
        assert len(seen) >= 2
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["worker.json"]  # no temp left
        current = read_credential_file(path)
        assert current.credential == keeper.current()
        # the file's credential works; the first one was revoked by rotation
        info = WorkerInfo(id="rot")
        assert RemoteQueue(conn).heartbeat(info, [], 30).lost == []
        with pytest.raises(WorkerCredentialRejected):
            RemoteQueue(ApiConnection(api.url, credential=first.credential)).heartbeat(info, [], 30)
    finally:
        api.stop()


def test_a_call_in_flight_during_rotation_is_sent_again_with_the_new_credential(
    auth_api: ApiServer,
) -> None:
    """The server revokes the old credential as it issues the new one; a heartbeat
    built with the old one and answered 401 after the keeper switched is resent
    with the new one instead of stopping the worker."""
    old = enroll(ApiConnection(auth_api.url), enrollment_token(admin_client(auth_api)), "flight")
    new = rotate(ApiConnection(auth_api.url, credential=old.credential))
    handed: list[str] = []

    def credential() -> str:  # the first request goes out with the old one
        cred = old.credential if not handed else new.credential
        handed.append(cred)
        return cred

    conn = ApiConnection(auth_api.url, credential=credential)
    assert RemoteQueue(conn).heartbeat(WorkerInfo(id="flight"), [], 30).lost == []
    assert handed[0] == old.credential and handed[-1] == new.credential
    with pytest.raises(WorkerCredentialRejected):  # and the old one alone is refused
        RemoteQueue(ApiConnection(auth_api.url, credential=old.credential)).heartbeat(
            WorkerInfo(id="flight"), [], 30
        )


def test_a_worker_given_its_credential_in_the_environment_works_under_its_own_id(
    auth_api: ApiServer, tmp_path: Path
) -> None:
    """``CONVEYOR_WORKER_CREDENTIAL`` (e.g. from a secret store) without --join: the
    worker asks the API which id the credential speaks for instead of making one up
    (which the API would refuse, stopping the worker)."""
    cred = auth_api.service.auth.create_token("env-worker", "worker", worker_id="env-worker")
    data = tmp_path / "env-host"
    data.mkdir()
    log = tmp_path / "worker-env.log"
    env = {**WORKER_ENV, "CONVEYOR_WORKER_CREDENTIAL": cred.token}
    t0 = datetime.now(UTC)
    proc = start_process(
        ["worker", "--data-dir", str(data), "--backend", auth_api.url], data, log, env
    )
    _started.append(proc)
    try:
        wait_heartbeat(auth_api, "env-worker", t0, proc, log)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text(errors="replace")
    assert cred.token not in log.read_text(errors="replace")
