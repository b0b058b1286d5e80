"""A worker frozen past its lease wakes up after another attempt completed the task.

Issue 14: a stale attempt must not change, add or delete a single final output.
API (``conveyor serve``) and workers run as separate processes on the embedded
store; the frozen worker is stopped with SIGSTOP (its ffmpeg, in a session of
its own, keeps encoding), so it resumes with a finished encode in hand and
tries to publish it, as a worker caught by a long GC pause or a VM migration
would.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.chaos.test_worker_faults import TYPES, start_worker, submit_long, wait_progress
from tests.conftest import Server, stop_outside_writes, wait_task


def freeze_on_first_write(pid: int, root: Path, database: Path, timeout: float) -> bool:
    """SIGSTOP ``pid`` the moment any object appears below ``root`` (staged or final;
    not the store's own temporary files), between two of its database writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".conveyor-tmp"]
            if filenames:
                stop_outside_writes(pid, database)
                return True
        time.sleep(0.0005)
    return False


def snapshot(api: Server, task: dict[str, Any]) -> dict[str, tuple[str, int, int]]:
    """(sha256, inode, mtime_ns) of every final output of ``task`` on the local store."""
    got = {}
    for o in task["outputs"]:
        path = api.data_dir / "buckets" / o["bucket"] / o["key"]
        st = path.stat()
        got[o["key"]] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_ino, st.st_mtime_ns)
    return got


def test_a_frozen_worker_cannot_touch_outputs_another_attempt_published(
    api: Server, long_clip: Path, tmp_path: Path
) -> None:
    task_id = submit_long(api, long_clip)
    frozen = start_worker(api, tmp_path, "frozen")
    rescuer = None
    try:
        wait_progress(api, task_id, 5.0)
        # frozen between two uploads: right after its first output object lands
        assert freeze_on_first_write(
            frozen.pid, api.data_dir / "buckets" / "output", api.data_dir / "conveyor.db", 120
        )
        rescuer = start_worker(api, tmp_path, "rescuer")
        task = wait_task(api.client, task_id, timeout=240)
        assert task["status"] == "completed", task
        assert [h["worker_id"] for h in task["history"]] == ["frozen", "rescuer"]
        before = snapshot(api, task)
        keys_before = stored_outputs_of(api)
        assert len(before) == len(TYPES)

        os.kill(frozen.pid, signal.SIGCONT)
        log = tmp_path / "frozen.log"
        deadline = time.monotonic() + 60
        while "lease lost" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # whatever it would still do, it has had the time to do it

        after = wait_task(api.client, task_id)
        assert after["status"] == "completed" and after["attempts"] == 2, after
        assert snapshot(api, after) == before, "a final output was rewritten or replaced"
        assert stored_outputs_of(api) == keys_before, "an output was added or deleted"
        # and what the stale attempt staged is gone (or was never written)
        staging = api.data_dir / "buckets" / "output" / ".conveyor-staging"
        assert [p for p in staging.rglob("*") if p.is_file()] == []
    finally:
        for proc in (frozen, rescuer):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def _store(api: Server) -> Any:
    from conveyor.storage.local import LocalBlobStore

    return LocalBlobStore(api.data_dir / "buckets")


def stored_outputs_of(api: Server) -> list[str]:
    return [o.key for o in _store(api).list("output")]
