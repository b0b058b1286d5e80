"""Work folders: one per worker process, removed when their worker is gone.

A worker killed with SIGKILL cannot remove the folders its tasks were using,
and several workers may share one temp root on a host.  So each worker works
in a folder of its own and holds an exclusive ``flock`` on a file inside it
for as long as it lives; the kernel drops the lock when the process dies, so a
worker starting up removes exactly the folders whose lock it can take — never
a live worker's, whatever became of PIDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

log = logging.getLogger("conveyor.worker")

LOCK_NAME = ".lock"
UNLOCKED_GRACE_S = 600.0
PREFIX = "w-"


class WorkRoot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock: IO[bytes] | None = None

    def open(self) -> int:
        """Create this worker's folder, locked; remove dead workers' folders.  Returns
        how many were removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        removed = self._remove_dead()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(self.path / LOCK_NAME, "wb")  # noqa: SIM115 - held for the worker's life
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = lock
        return removed

    def close(self) -> None:
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None

    def _remove_dead(self) -> int:
        removed = 0
        for entry in self.root.iterdir():
            if entry == self.path or not entry.is_dir() or entry.is_symlink():
                continue
            if not self._dead(entry):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        return removed

    @staticmethod
    def _dead(folder: Path) -> bool:
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            # no lock: a worker starting this instant, or one from before these locks;
            # the latter's folder is old by the time anyone looks
            with contextlib.suppress(OSError):
                return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
            return False
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live worker holds it
        finally:
            os.close(fd)
        return True
