"""The writers' lock of one SQLite file, shared by the processes of a host.

Every process takes an exclusive ``flock`` on ``<database>.lock`` around its write
transactions, so a waiting process is woken by the kernel the moment the lock is
free, where SQLite's busy handler would retry after sleeps of up to 100 ms (two
worker processes then spend more time asleep than writing).

A process stopped while it holds the lock (SIGSTOP, a paused VM, a debugger) keeps
it until it runs again, and a blocking ``flock`` cannot be given a deadline.  So a
contended wait is made by a helper thread while the writer waits for it with one:
after the deadline the writer goes ahead without the lock, under SQLite's own
locking, which alone keeps writers correct (the lock only orders them).  It then
commits unless the stopped process is inside its own transaction, and otherwise
fails with "database is locked" after ``busy_timeout``, an outage its caller retries,
instead of hanging for as long as the other process is stopped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

log = logging.getLogger("conveyor.backends.sqlite")


class HostLock:
    """``<path>.lock``, opened on first use (nothing where it cannot be made: an
    in-memory database, a read-only folder; SQLite's own locking then suffices).

    One process's writers must call ``acquire`` one at a time (the engine holds its
    writer lock around it): a ``flock`` on one open file is granted to it twice."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._failed = path == ":memory:"
        self._cond = threading.Condition()
        self._wanted = False  # a writer waits for the helper's flock
        self._granted = False  # the helper took the lock for that writer
        self._helper_busy = False  # the helper is inside a blocking flock
        self._bypass = False  # a wait timed out: until the lock frees, writers do not wait
        self._helper: threading.Thread | None = None

    def _open(self) -> int | None:
        if self._fd is None and not self._failed:
            try:
                self._fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                self._failed = True
                log.debug("no writers' lock file beside %s (%s)", self.path, exc)
        return self._fd

    def acquire(self, wait_s: float) -> bool:
        """Take the lock within ``wait_s`` seconds.  False when there is no lock file,
        or when another process held it all that time (then warned about)."""
        fd = self._open()
        if fd is None:
            return False
        with self._cond:
            if self._helper_busy and self._bypass:
                return False
            if not self._helper_busy:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                if self._helper is None or not self._helper.is_alive():
                    helper = threading.Thread(
                        target=self._wait_loop,
                        args=(os.dup(fd),),
                        name="conveyor-sqlite-lock",
                        daemon=True,
                    )
                    helper.start()  # raises (no thread, no fd): nothing is left half-set
                    self._helper = helper
                self._helper_busy = True
            self._wanted = True
            self._cond.notify_all()
            got = False
            try:
                got = self._cond.wait_for(lambda: self._granted, wait_s)
            finally:
                if self._granted and not got:  # interrupted as the helper took it: let go
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._wanted = self._granted = False
            self._bypass = not got
        if not got:
            log.warning(
                "another process has held the writers' lock on %s for over %.0f s "
                "(stopped or frozen?): writing under SQLite's own locking",
                self.path,
                wait_s,
            )
        return got

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _wait_loop(self, fd: int) -> None:
        """The helper: a blocking ``flock`` for each writer that found the lock taken;
        a lock got after its writer gave up is let go at once.  ``fd`` is the helper's
        own duplicate (the same lock), so closing the backend cannot pull it away."""
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._helper_busy or self._failed)
                    if self._failed:
                        return
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError:  # cannot wait here: writers leave the ordering to SQLite
                    log.warning(
                        "waiting for the writers' lock on %s failed", self.path, exc_info=True
                    )
                    with self._cond:
                        self._helper_busy = False
                    return
                with self._cond:
                    self._helper_busy = self._bypass = False
                    if self._wanted and not self._failed:
                        self._granted = True
                        self._cond.notify_all()
                    else:
                        fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._cond:
            fd, self._fd = self._fd, None
            self._failed = True
            self._cond.notify_all()
        if fd is not None:
            os.close(fd)
