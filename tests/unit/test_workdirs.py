"""Work folders of dead workers are removed; a live worker's, never (conveyor.worker.workdirs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conveyor.worker.workdirs import LOCK_NAME, WorkRoot

HOLD = """
import sys, time
from pathlib import Path
from conveyor.worker.workdirs import WorkRoot
w = WorkRoot(Path(sys.argv[1]))
w.open()
(w.path / "task-1").mkdir()
print(w.path, flush=True)
time.sleep(60)
"""


def start_holder(root: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_dead_workers_folder_goes_and_a_live_ones_stays(tmp_path: Path) -> None:
    root = tmp_path / "conveyor-work"
    live, live_dir = start_holder(root)
    dead, dead_dir = start_holder(root)
    dead.kill()
    dead.wait()
    try:
        mine = WorkRoot(root)
        assert mine.open() == 1
        assert not dead_dir.exists()
        assert (live_dir / "task-1").is_dir() and (live_dir / LOCK_NAME).is_file()
        assert (mine.path / LOCK_NAME).is_file()
        assert oct(mine.path.stat().st_mode & 0o777) == "0o700"
        # a second worker starting now leaves both live folders alone
        other = WorkRoot(root)
        assert other.open() == 0
        assert mine.path.is_dir() and live_dir.is_dir()
        other.close()
        mine.close()
        assert not mine.path.exists() and not other.path.exists()
    finally:
        live.kill()
        live.wait()


def test_unlocked_and_foreign_folders(tmp_path: Path) -> None:
    root = tmp_path / "conveyor-work"
    root.mkdir()
    starting = root / "w-1-abcdef01"  # a worker between mkdir and its lock: young, kept
    starting.mkdir()
    crashed = root / "w-2-abcdef02"  # one that died there long ago: removed
    crashed.mkdir()
    legacy = root / "01m985vf7exscv10f95tzcp2at-1-473931"  # an older worker's task folder
    legacy.mkdir()
    foreign = root / "someone-elses"
    foreign.mkdir()
    old = time.time() - 3 * 86400
    for d in (crashed, legacy, foreign):
        os.utime(d, (old, old))
    w = WorkRoot(root)
    assert w.open() == 2
    assert starting.is_dir() and foreign.is_dir()
    assert not crashed.exists() and not legacy.exists()
    w.close()
