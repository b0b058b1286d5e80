"""Scale-out shape: an API process and two worker processes on PostgreSQL + S3.

Each worker has only its own temp dir; everything else is shared through the
database and the object store, as on separate hosts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_ENV, free_port, make_clip, need_tool, start_process, wait_healthy
from tests.pgserver import fresh_database
from tests.s3server import S3Server, require_server


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], S3Server]]:
    need_tool("ffmpeg", "ffprobe")
    s3 = require_server()
    s3.empty_buckets()
    with fresh_database() as pg:
        env = {
            **FAST_ENV,
            "CONVEYOR_BACKEND_URL": pg,
            "CONVEYOR_STORAGE_URL": s3.storage_url(),
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        }
        yield env, s3


def _start_api(
    tmp_path: Path, env: dict[str, str], *, trigger: bool
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    data = tmp_path / "api"
    data.mkdir()
    log = tmp_path / "api.log"
    args = ["serve", "--port", str(port), "--data-dir", str(data)]
    if not trigger:
        args.append("--no-trigger")
    proc = start_process(args, data, log, env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    return url, proc


def _start_worker(tmp_path: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    data = tmp_path / name
    data.mkdir()
    return start_process(
        ["worker", "--data-dir", str(data), "--concurrency", "2", "--worker-id", name],
        data,
        tmp_path / f"{name}.log",
        {**env, "TEMP_DIR": str(data / "tmp")},
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_two_workers_share_postgres_and_s3(
    stack_env: tuple[dict[str, str], S3Server], tmp_path: Path
) -> None:
    import httpx

    env, s3 = stack_env
    url, api = _start_api(tmp_path, env, trigger=False)
    workers = {name: _start_worker(tmp_path, env, name) for name in ("gpu-a", "gpu-b")}
    client = httpx.Client(base_url=url, timeout=30)
    try:
        tiny = make_clip(tmp_path / "tiny.mp4", width=160, height=120, seconds=1.0)
        assert client.put("/api/files/input/tiny.mp4", content=tiny.read_bytes()).status_code == 201
        ids = []
        for _ in range(50):
            r = client.post(
                "/api/queue/add",
                json={"input_key": "tiny.mp4", "transcode_types": ["thumbnail"]},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["task_id"])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            s = client.get("/api/queue/status").json()
            if s["pending"] + s["processing"] + s["delayed"] == 0:
                break
            time.sleep(0.5)
        tasks = [client.get(f"/api/tasks/{i}").json() for i in ids]
        assert [t["status"] for t in tasks] == ["completed"] * 50
        assert all(t["attempts"] == 1 and len(t["history"]) == 1 for t in tasks), "exactly once"
        ran_on = {t["worker_id"] for t in tasks}
        assert ran_on == {"gpu-a", "gpu-b"}, ran_on
        # outputs are in S3, and the API's download path redirects to a presigned URL
        key = tasks[0]["outputs"][0]["key"]
        r = client.get(f"/api/files/output/{key}", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].startswith(s3.endpoint_url)
        assert httpx.get(r.headers["location"]).content[:3] == b"\xff\xd8\xff"

        # SIGKILL the worker running a long task: the other one finishes it (20 s of 720p:
        # a 5 s clip encodes in about 1.5 s, and the task could complete before the kill)
        long = make_clip(tmp_path / "long.mp4", width=1280, height=720, seconds=20.0)
        assert client.put("/api/files/input/long.mp4", content=long.read_bytes()).status_code == 201
        task_id = client.post(
            "/api/queue/add",
            json={"input_key": "long.mp4", "transcode_types": ["mp4_standard", "thumbnail"]},
        ).json()["task_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = client.get(f"/api/tasks/{task_id}").json()
            if t["status"] == "processing" and t["progress"]["percent"] > 3:
                break
            time.sleep(0.1)
        victim = t["worker_id"]
        os.killpg(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait(10)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            t = client.get(f"/api/tasks/{task_id}").json()
            if t["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.3)
        assert t["status"] == "completed", t
        assert t["attempts"] == 2
        survivor = ({"gpu-a", "gpu-b"} - {victim}).pop()
        assert [h["worker_id"] for h in t["history"]] == [victim, survivor]
        assert [h["outcome"] for h in t["history"]] == ["lease_expired", "completed"]
        for o in t["outputs"]:
            assert s3.store().stat(o["bucket"], o["key"]) is not None
    finally:
        for w in workers.values():
            _stop(w)
        _stop(api)


def test_s3_upload_trigger_one_task_per_upload(
    stack_env: tuple[dict[str, str], S3Server], tmp_path: Path
) -> None:
    import httpx

    env, s3 = stack_env
    # two API hosts both run the trigger: still one task per upload
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    url, api1 = _start_api(tmp_path / "one", env, trigger=True)
    url2, api2 = _start_api(tmp_path / "two", env, trigger=True)
    try:
        store = s3.store()
        clip = make_clip(tmp_path / "c.mp4", width=160, height=120, seconds=1.0)
        store.put_file("input", "drop/a.mp4", clip)
        store.put_file("input", "drop/b.mkv", clip)
        store.put_file("input", "drop/readme.txt", clip)
        client = httpx.Client(base_url=url, timeout=30)
        deadline = time.monotonic() + 30
        tasks: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            tasks = client.get("/api/tasks", params={"limit": 50}).json()["tasks"]
            if len(tasks) >= 2:
                break
            time.sleep(0.3)
        time.sleep(2.0)  # more scans by both hosts
        tasks = client.get("/api/tasks", params={"limit": 50}).json()["tasks"]
        keys = sorted(str(t["input"]["key"]) for t in tasks)
        assert keys == ["drop/a.mp4", "drop/b.mkv"]
        assert all(t["trigger"] == "upload" for t in tasks)
        assert httpx.get(f"{url2}/api/tasks").json()["count"] == 2
    finally:
        _stop(api1)
        _stop(api2)
