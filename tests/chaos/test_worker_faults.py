"""A worker killed mid-transcode, and a running transcode cancelled.

API (``conveyor serve``) and worker (``conveyor worker``) run as separate
processes sharing the embedded store, as they would on two hosts.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.errors import LeaseLost
from conveyor.models import Lease
from tests.conftest import (
    FAST_ENV,
    Server,
    start_process,
    wait_task,
)

# two outputs of one ffmpeg run: enough for a kill, a cancel or a freeze between two
# uploads; no x265 rung (a 720p h265 encode, run to completion in three tests, was most of
# these tests' CPU and proves nothing more about the worker)
TYPES = ["mp4_standard", "thumbnail"]


def ffmpeg_pids(marker: str) -> list[int]:
    """ffmpeg processes whose command line mentions ``marker`` (our data dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state != "Z"
            and argv
            and argv[0].endswith(b"ffmpeg")
            and any(marker.encode() in a for a in argv)
        ):
            pids.append(int(entry))
    return pids


def start_worker(api: Server, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    return start_process(
        ["worker", "--data-dir", str(api.data_dir), "--concurrency", "1", "--worker-id", name],
        api.data_dir,
        tmp_path / f"{name}.log",
        FAST_ENV,
    )


def submit_long(api: Server, clip: Path) -> str:
    r = api.client.put("/api/files/input/long.mp4", content=clip.read_bytes())
    assert r.status_code == 201
    r = api.client.post("/api/queue/add", json={"input_key": "long.mp4", "transcode_types": TYPES})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def wait_progress(api: Server, task_id: str, above: float, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = api.client.get(f"/api/tasks/{task_id}").json()
        if t["status"] == "processing" and t["progress"]["percent"] > above:
            return dict(t)
        assert t["status"] in ("pending", "processing"), t
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never passed {above}%")


def test_sigkill_mid_transcode_redelivers(api: Server, long_clip: Path, tmp_path: Path) -> None:
    task_id = submit_long(api, long_clip)
    first = start_worker(api, tmp_path, "doomed")
    wait_progress(api, task_id, 5.0)
    # the lease the doomed worker holds, read from the store as an auditor would
    with sqlite3.connect(api.data_dir / "conveyor.db") as db:
        token, attempt = db.execute(
            "SELECT lease_token, attempts FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    # its ffmpeg dies with it (no orphan keeps burning the GPU/CPU)
    deadline = time.monotonic() + 5
    while ffmpeg_pids(str(api.data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ffmpeg_pids(str(api.data_dir)) == []

    second = start_worker(api, tmp_path, "rescuer")
    try:
        task = wait_task(api.client, task_id, timeout=240)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert task["status"] == "completed", task
    assert task["attempts"] == 2
    history = task["history"]
    assert [h["outcome"] for h in history] == ["lease_expired", "completed"]
    assert [h["worker_id"] for h in history] == ["doomed", "rescuer"]
    assert len(task["outputs"]) == len(TYPES)
    for o in task["outputs"]:
        r = api.client.get(f"/api/files/{o['bucket']}/{o['key']}", headers={"Range": "bytes=0-3"})
        assert r.status_code == 206
    # a completion from the old lease is refused
    backend = SQLiteBackend(api.data_dir / "conveyor.db")
    try:
        stale = Lease(
            task_id=task_id,
            token=token,
            worker_id="doomed",
            attempt=attempt,
            expires_at=datetime.now(UTC),
        )
        with pytest.raises(LeaseLost):
            backend.complete(stale, [])
        after = backend.get(task_id)
        assert (
            after is not None and after.status == "completed" and len(after.outputs) == len(TYPES)
        )
    finally:
        backend.close()


def test_cancel_running_transcode_kills_ffmpeg(
    api: Server, slow_clip: Path, tmp_path: Path
) -> None:
    task_id = submit_long(api, slow_clip)
    worker = start_worker(api, tmp_path, "canceller")
    try:
        # above 3 %: the percentage comes from ffmpeg itself (2 % is the ffprobe phase)
        wait_progress(api, task_id, 3.5)
        assert ffmpeg_pids(str(api.data_dir)), "ffmpeg should be running"
        started = time.monotonic()
        r = api.client.post(f"/api/tasks/{task_id}/cancel")
        assert r.status_code == 200
        while ffmpeg_pids(str(api.data_dir)) and time.monotonic() - started < 10:
            time.sleep(0.05)
        gone_after = time.monotonic() - started
        assert ffmpeg_pids(str(api.data_dir)) == [], "no ffmpeg process may be left"
        assert gone_after < 5, f"ffmpeg still alive {gone_after:.1f}s after cancel"
        task = wait_task(api.client, task_id, timeout=10)
        assert task["status"] == "cancelled"
        assert task["outputs"] == []
        # the worker is still alive and takes new work
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    left = [
        p.relative_to(api.data_dir)
        for p in (api.data_dir / "tmp" / "conveyor-work").rglob("*")
        if p.name != ".lock" and not (p.is_dir() and p.parent.name == "conveyor-work")
    ]
    assert left == [], f"task folders removed, only live workers' own folders stay: {left}"


def test_sigterm_releases_the_running_task(api: Server, slow_clip: Path, tmp_path: Path) -> None:
    # the slow clip: the 6 s one could finish within the 1 s grace on an idle machine
    task_id = submit_long(api, slow_clip)
    leaving = start_process(
        ["worker", "--data-dir", str(api.data_dir), "--worker-id", "leaving"],
        api.data_dir,
        tmp_path / "leaving.log",
        {**FAST_ENV, "CONVEYOR_SHUTDOWN_GRACE": "1"},
    )
    wait_progress(api, task_id, 1.0)
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(30) == 0, (tmp_path / "leaving.log").read_text()
    released = api.client.get(f"/api/tasks/{task_id}").json()
    assert released["status"] == "pending", released
    assert released["attempts"] == 0
    assert released["history"][-1]["outcome"] == "released"
    assert ffmpeg_pids(str(api.data_dir)) == []
    log = (tmp_path / "leaving.log").read_text()
    assert "stopping: no new claims" in log and "Releasing task" in log
    taker = start_worker(api, tmp_path, "taker")
    try:
        task = wait_task(api.client, task_id, timeout=120)
    finally:
        taker.send_signal(signal.SIGTERM)
        taker.wait(30)
    assert task["status"] == "completed"
    assert task["attempts"] == 1
    assert [h["outcome"] for h in task["history"]] == ["released", "completed"]
