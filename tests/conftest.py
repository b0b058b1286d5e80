"""Shared fixtures: real ffmpeg clips, a real Conveyor server in a subprocess.

A test that needs a system tool and cannot find it fails when CI=true and
skips elsewhere, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from conveyor.models import OutputFile, Task, TaskStatus
from conveyor.outputs import promote_outputs
from conveyor.storage.base import STAGING_ROOT, BlobStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = f"required tool(s) not installed: {', '.join(missing)}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def publish(store: BlobStore, staged: list[OutputFile]) -> list[OutputFile]:
    """What the worker does once a task is completed: a processor's staged outputs moved
    to their final keys (conveyor.outputs)."""
    lost = promote_outputs(store, Task(status=TaskStatus.COMPLETED, outputs=staged))
    assert lost == [], f"staged outputs missing: {lost}"
    return [o.model_copy(update={"staged_key": None}) for o in staged]


def stored_outputs(store: BlobStore, bucket: str = "output") -> list[str]:
    """Every key in ``bucket``: published objects and staged ones."""
    return [o.key for o in store.list(bucket)] + [
        o.key for o in store.list(bucket, STAGING_ROOT + "/")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_clip(
    path: Path,
    *,
    width: int = 320,
    height: int = 240,
    seconds: float = 2.0,
    audio: bool = True,
    rate: int = 25,
) -> Path:
    """A real H.264/AAC MP4 made by ffmpeg from its test sources."""
    need_tool("ffmpeg")
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}",
    ]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "64k", "-shortest"]
    cmd += [str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def small_clip(clips_dir: Path) -> Path:
    return make_clip(clips_dir / "small.mp4", seconds=3.0)


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_process(
    args: list[str], data_dir: Path, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = {
        **os.environ,
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_CONFIG": str(data_dir / "no-config.yaml"),
        **(env or {}),
    }
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def holds_flock(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a ``flock`` on ``path`` (read from /proc/locks; a
    waiter's line reads "1: -> FLOCK ...", and does not count)."""
    inode = str(path.stat().st_ino)
    return any(
        len(parts) > 5
        and parts[1] == "FLOCK"
        and parts[4] == str(pid)
        and parts[5].rsplit(":", 1)[-1] == inode
        for parts in (line.split() for line in Path("/proc/locks").read_text().splitlines())
    )


def stop_outside_writes(pid: int, database: Path) -> None:
    """SIGSTOP ``pid``, at a moment it is not writing to the SQLite file ``database``.

    A process stopped inside its write transaction holds SQLite's write lock, and every
    other process sharing the file cannot write until it runs again: SQLite has no way
    to take a lock from a stopped process.  So a test about what a frozen worker does
    to outputs or leases freezes it between two transactions (a few milliseconds away
    at most); ``tests/integration/test_sqlite_stopped_writer.py`` covers the lock."""
    lock = Path(str(database) + ".lock")
    deadline = time.monotonic() + 30
    while True:
        os.kill(pid, signal.SIGSTOP)
        while not all_stopped(pid):  # SIGSTOP lands on each thread in its own time
            time.sleep(0.0002)
        if not (lock.exists() and holds_flock(pid, lock)):
            return
        assert time.monotonic() < deadline, f"process {pid} held {lock} at every try"
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)


def all_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (state T in /proc)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # a thread that just ended
        if state not in ("T", "t"):
            return False
    return True


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not healthy in {timeout}s:\n{log_path.read_text(errors='replace')}")


def launch(
    tmp_path: Path,
    command: str = "up",
    *,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> Server:
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = tmp_path / f"{command}-{port}.log"
    args = [command, "--port", str(port), "--data-dir", str(data_dir), *(extra or [])]
    proc = start_process(args, data_dir, log_path, env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log_path)
    return Server(url=url, data_dir=data_dir, proc=proc, log_path=log_path)


FAST_ENV = {
    "CONVEYOR_HEARTBEAT_INTERVAL": "0.5",
    "CONVEYOR_LEASE_SECONDS": "4",
    "CONVEYOR_REAP_INTERVAL": "0.5",
    "CONVEYOR_RETRY_BACKOFF_BASE": "0.2",
    "CONVEYOR_POLL_INTERVAL": "0.2",
    "CONVEYOR_TRIGGER_INTERVAL": "0.3",
    "CONVEYOR_TRIGGER_SETTLE_SECONDS": "0.5",
    "CONVEYOR_SHUTDOWN_GRACE": "5",
    # no GPU here: "auto" would try NVENC (h264, h265) and NVDEC with four ffmpeg runs at
    # every start of a process with a worker, about a second each time on two busy cores
    "CONVEYOR_TRANSCODE_ENCODER": "cpu",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``conveyor up`` in a subprocess with short timings, on a free port."""
    need_tool("ffmpeg", "ffprobe")
    srv = launch(tmp_path, "up", env=FAST_ENV)
    try:
        yield srv
    finally:
        srv.stop()


def wait_task(
    client: httpx.Client,
    task_id: str,
    *,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t: dict[str, Any] = client.get(f"/api/tasks/{task_id}").json()
        if t["status"] in statuses:
            return t
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} not in {statuses} after {timeout}s: {t}")


@contextmanager
def in_process_app(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    with_worker: bool = False,
    concurrency: int | None = None,
    **settings: Any,
) -> Iterator[TestClient]:
    """The real app on SQLite in this process (no trigger; a worker only if asked), with
    ``settings`` over the defaults and no config file."""
    from conveyor.config import load_settings
    from conveyor.server.app import create_app
    from conveyor.server.runtime import Runtime

    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    runtime = Runtime.build(
        load_settings(data_dir=tmp_path, **settings),
        with_worker=with_worker,
        with_trigger=False,
        concurrency=concurrency,
    )
    with TestClient(create_app(runtime)) as client:
        yield client
