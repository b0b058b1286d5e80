"""Seed 002's operator verbs: make start-all, status, logs, stop-all."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import FAST_ENV, free_port, need_tool

ROOT = Path(__file__).resolve().parents[2]


def make(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FAST_ENV}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_start_status_logs_stop(tmp_path: Path) -> None:
    need_tool("make", "ffmpeg")
    port = free_port()
    common = [f"DATA={tmp_path / 'data'}", f"PORT={port}", f"LOG_DIR={tmp_path}"]
    url = f"http://127.0.0.1:{port}"
    pids: list[int] = []
    try:
        res = make("start-all", *common)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "api started" in res.stdout and "worker started" in res.stdout
        run_dir = tmp_path / "data" / "run"
        pids = [int((run_dir / f"{n}.pid").read_text()) for n in ("api", "worker")]
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/queue/status", timeout=2).json()["workers"] == 1:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api-server.log").read_text()
            time.sleep(0.3)

        again = make("start-api", *common)
        assert "already running" in again.stdout, "a second start does not start a second API"

        status = make("status", *common)
        assert status.returncode == 0
        assert "api: running" in status.stdout and "worker: running" in status.stdout
        assert "healthy" in status.stdout and "workers  1" in status.stdout

        logs = make("logs", *common, "LOGS_FOLLOW=")
        assert "Conveyor API on" in logs.stdout and "Worker" in logs.stdout

        stop = make("stop-all", *common)
        assert stop.returncode == 0
        assert "worker stopped" in stop.stdout and "api stopped" in stop.stdout
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still runs"
        assert "stopped" in make("status", *common).stdout
    finally:
        for pid in pids:  # only what this test started, by pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, 9)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
