"""Work folders: one per worker process, removed when their worker is gone.

A worker killed with SIGKILL cannot remove the folders its tasks were using,
and several workers may share one temp root on a host.  So each worker works
in a folder of its own (``w-<pid>-<random>``) and holds an exclusive ``flock``
on the ``.lock`` file inside it for as long as it lives; the kernel drops the
lock when the process dies, so a worker starting up removes exactly the
folders whose lock it can take — never a live worker's, whatever became of
PIDs.  The lock file is locked under a temporary name and then renamed into
place, so nobody ever sees a ``.lock`` its owner does not hold yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

log = logging.getLogger("conveyor.worker")

LOCK_NAME = ".lock"
PREFIX = "w-"
# a worker folder without its lock: one whose worker died between creating the
# folder and locking it (a moment at start)
UNLOCKED_GRACE_S = 600.0
# task folders of workers from before these locks (``<task id>-<attempt>-<hex>``)
LEGACY = re.compile(r"^[0-9a-z]{26}-\d+-[0-9a-f]{6}$")
LEGACY_GRACE_S = 2 * 86400.0


class WorkRoot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock: IO[bytes] | None = None

    def open(self) -> int:
        """Create this worker's folder, locked; remove dead workers' folders.  Returns
        how many were removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        pending = self.path / f"{LOCK_NAME}.{uuid.uuid4().hex}"
        lock = open(pending, "wb")  # noqa: SIM115 - held for the worker's life
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # nobody else knows this name
        os.replace(pending, self.path / LOCK_NAME)
        self._lock = lock
        return self._remove_dead()

    def close(self) -> None:
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None

    def _remove_dead(self) -> int:
        removed = 0
        for entry in self.root.iterdir():
            if entry == self.path or entry.is_symlink() or not entry.is_dir():
                continue
            if entry.name.startswith(PREFIX):
                dead = self._dead(entry)
            elif LEGACY.match(entry.name):
                dead = _older_than(entry, LEGACY_GRACE_S)
            else:
                continue  # not ours to judge
            if dead:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    @staticmethod
    def _dead(folder: Path) -> bool:
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return _older_than(folder, UNLOCKED_GRACE_S)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live worker holds it
        finally:
            os.close(fd)
        return True


def _older_than(folder: Path, seconds: float) -> bool:
    with contextlib.suppress(OSError):
        return time.time() - folder.stat().st_mtime > seconds
    return False
