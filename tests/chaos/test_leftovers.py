"""What a killed worker leaves on its host is removed by the next one (issue 14, finding 7).

A worker killed with SIGKILL cannot remove its tasks' work folders (inputs,
half-written renditions: gigabytes for a long video). The next worker that
starts on the host removes them, and never a live worker's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.chaos.test_worker_faults import start_worker, submit_long, wait_progress
from tests.conftest import Server


def task_folders(root: Path, task_id: str) -> list[Path]:
    return [p for p in root.rglob(f"{task_id}-*") if p.is_dir()]


def test_a_killed_workers_work_folder_is_removed_by_the_next_worker(
    api: Server, long_clip: Path, tmp_path: Path
) -> None:
    root = api.data_dir / "tmp" / "conveyor-work"
    task_id = submit_long(api, long_clip)
    doomed = start_worker(api, tmp_path, "doomed")
    wait_progress(api, task_id, 5.0)
    left = task_folders(root, task_id)
    assert len(left) == 1 and any(left[0].iterdir()), "the running task has its folder"
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    assert left[0].is_dir()

    alive = start_worker(api, tmp_path, "alive")  # a live worker's folder must stay
    nxt = None
    try:
        log = tmp_path / "alive.log"
        deadline = time.monotonic() + 30
        while "Worker alive started" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        assert not left[0].exists(), "the dead worker's task folder is removed"
        mine = [p for p in root.iterdir() if p.is_dir()]
        nxt = start_worker(api, tmp_path, "next")
        log = tmp_path / "next.log"
        deadline = time.monotonic() + 30
        while "Worker next started" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        assert all(p.exists() for p in mine), "a live worker's folder is left alone"
    finally:
        for proc in (alive, nxt):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
