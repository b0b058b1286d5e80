"""End to end: `conveyor serve` and a separate remote `conveyor worker` that has only the API URL.

The worker process gets an empty data dir: no database, no bucket folder,
no storage URL.  Everything it reads and writes goes through
``/api/worker/v1`` (plain HTTP, then HTTPS with a self-signed certificate
the worker trusts through ``--ca-cert``), and the outputs land in the API
host's bucket.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.errors import RemoteUnavailable
from conveyor.remote.connection import ApiConnection
from conveyor.remote.queue import RemoteQueue
from tests.conftest import (
    FAST_ENV,
    free_port,
    make_clip,
    need_tool,
    start_process,
    wait_task,
)

TYPES = ["mp4_smooth", "thumbnail"]
WORKER_ENV = {**FAST_ENV, "CONVEYOR_ENCODER": "cpu"}


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def self_signed_cert(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made by the openssl CLI, valid for a day."""
    need_tool("openssl")
    cert, key = dest / "cert.pem", dest / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def wait_up(url: str, proc: Proc, verify: Any = True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.log()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not up in {timeout}s:\n{proc.log()}")


@dataclass
class Deployment:
    url: str
    api_data: Path
    worker_data: Path
    api: Proc
    worker: Proc
    client: httpx.Client


def deploy(tmp_path: Path, *, tls: bool) -> Deployment:
    need_tool("ffmpeg", "ffprobe")
    api_data, worker_data = tmp_path / "api-host", tmp_path / "gpu-host"
    api_data.mkdir()
    worker_data.mkdir()
    port = free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(api_data), "--no-trigger"]
    verify: Any = True
    worker_args = ["worker", "--data-dir", str(worker_data), "--concurrency", "1"]
    if tls:
        cert, key = self_signed_cert(tmp_path)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        verify = ssl.create_default_context(cafile=str(cert))
        worker_args += ["--ca-cert", str(cert)]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    api = Proc(start_process(args, api_data, tmp_path / "api.log", FAST_ENV), tmp_path / "api.log")
    wait_up(url, api, verify)
    worker_args += ["--backend", url]
    # the worker's environment names no database and no storage: only the API URL
    worker = Proc(
        start_process(worker_args, worker_data, tmp_path / "worker.log", WORKER_ENV),
        tmp_path / "worker.log",
    )
    client = httpx.Client(base_url=url, timeout=30, verify=verify)
    return Deployment(url, api_data, worker_data, api, worker, client)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Deployment]:
    d = deploy(tmp_path, tls=False)
    try:
        yield d
    finally:
        d.client.close()
        d.worker.stop()
        d.api.stop()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Deployment]:
    d = deploy(tmp_path, tls=True)
    try:
        yield d
    finally:
        d.client.close()
        d.worker.stop()
        d.api.stop()


def wait_worker(d: Deployment, timeout: float = 60) -> dict[str, Any]:
    """The remote worker, once it has heartbeated through the API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{d.worker.log()}")
        workers = d.client.get("/api/workers").json()
        if workers:
            return dict(workers[0])
        time.sleep(0.2)
    raise AssertionError(f"no worker heartbeat in {timeout}s:\n{d.worker.log()}")


def transcode(d: Deployment, clip: Path, key: str) -> tuple[dict[str, Any], float]:
    r = d.client.put(f"/api/files/input/{key}", content=clip.read_bytes())
    assert r.status_code == 201, r.text
    started = time.monotonic()
    r = d.client.post(
        "/api/queue/add",
        json={"input_bucket": "input", "input_key": key, "transcode_types": TYPES},
    )
    assert r.status_code == 201, r.text
    task = wait_task(d.client, r.json()["task_id"], timeout=120)
    return task, time.monotonic() - started


def check_outputs(d: Deployment, task: dict[str, Any]) -> None:
    assert task["status"] == "completed", (task, d.worker.log()[-3000:])
    assert sorted(o["name"] for o in task["outputs"]) == sorted(TYPES)
    for o in task["outputs"]:
        path = d.api_data / "buckets" / o["bucket"] / o["key"]
        assert path.is_file(), f"{path} missing on the API host"
        assert path.stat().st_size == o["size"] > 0
    # the worker host kept nothing: no database, no buckets, no leftover work files
    assert not (d.worker_data / "conveyor.db").exists()
    assert not (d.worker_data / "buckets").exists()
    # work files go right after the completion is recorded
    deadline = time.monotonic() + 10
    while True:
        leftovers = [
            p for p in (d.worker_data / "tmp").rglob("*") if p.is_file() and p.name != ".lock"
        ]  # the live worker's own folder holds its lock, nothing else
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert leftovers == []


def test_remote_worker_transcodes_through_the_api(plain: Deployment, small_clip: Path) -> None:
    w = wait_worker(plain)
    assert "transcode" in w["kinds"]
    task, took = transcode(plain, small_clip, "remote/a.mp4")
    check_outputs(plain, task)
    assert task["worker_id"] == w["id"]
    lines = plain.client.get(f"/api/tasks/{task['id']}/logs").json()["lines"]
    text = "\n".join(ln["line"] for ln in lines)
    assert "Task received" in text and "Task completed" in text  # shipped in log chunks
    # the idle worker is woken by the API, not by its next poll
    wait_s = _ts(task["started_at"]) - _ts(task["created_at"])
    print(f"\nremote e2e over HTTP: {TYPES} in {took:.2f} s, queue wait {wait_s * 1000:.0f} ms")


def test_remote_worker_over_tls_with_its_own_ca_bundle(tls: Deployment, clips_dir: Path) -> None:
    clip = make_clip(clips_dir / "tls.mp4", seconds=1.0)
    wait_worker(tls)
    task, took = transcode(tls, clip, "remote/tls.mp4")
    check_outputs(tls, task)
    print(f"\nremote e2e over HTTPS: transcode {TYPES} in {took:.2f} s")
    # and without the CA bundle the API's certificate is refused, clearly
    bare = RemoteQueue(ApiConnection(tls.url, retries=0))
    with pytest.raises(RemoteUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        bare.ping()
    bare.close()


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()
