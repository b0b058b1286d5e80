"""A process stopped while it holds the SQLite writers' lock holds up no other writer.

CI: a chaos test froze a worker (SIGSTOP) the moment its first output appeared, and
the task then stayed ``processing`` for 240 s with a second worker running beside it:
the frozen process held the host's writers' ``flock`` (``<database>.lock``), and every
other process's write waited for it in a blocking ``flock`` with no deadline.  On the
old code the write below never returned (the test's 20 s limit), and nothing said why.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor.backends.sqlite import engine
from conveyor.backends.sqlite.engine import SQLiteBackend
from conveyor.models import InputRef, Task
from tests.conftest import all_stopped

# takes the writers' lock the way a worker's transaction does, says so, and stops itself
HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.read()
"""


def submit(backend: SQLiteBackend, name: str, limit_s: float = 20.0) -> float:
    """Seconds one write took; fails the test if it has not returned in ``limit_s``."""
    done: list[float] = []
    errors: list[BaseException] = []

    def write() -> None:
        t0 = time.monotonic()
        try:
            backend.submit(
                Task(kind="transcode", input=InputRef(bucket="input", key=f"{name}.mp4"))
            )
        except BaseException as exc:  # reported below
            errors.append(exc)
        done.append(time.monotonic() - t0)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert done, f"the write of {name} has not returned after {limit_s} s"
    assert not errors, errors
    return done[0]


def test_a_stopped_lock_holder_delays_writers_by_the_wait_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine, "HOST_LOCK_WAIT_S", 1.0)
    db = tmp_path / "conveyor.db"
    backend = SQLiteBackend(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db) + ".lock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        deadline = time.monotonic() + 10
        while not all_stopped(holder.pid):
            assert time.monotonic() < deadline, "the holder never stopped"
            time.sleep(0.01)

        with caplog.at_level(logging.WARNING, logger="conveyor.backends.sqlite"):
            first = submit(backend, "a")
        assert 0.9 <= first < 6, first  # waited its second, then wrote under SQLite's lock
        assert "stopped or frozen?" in caplog.text
        # while the holder stays stopped, later writers do not wait again
        later = [submit(backend, f"b{i}") for i in range(5)]
        assert max(later) < 0.8, later
        assert backend.counts().pending == 6

        # the holder runs again and lets go: writers take the lock again, and wait for it
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.stdout.readline() == b"released\n"
        submit(backend, "c")
        import fcntl

        fd = os.open(str(db) + ".lock", os.O_RDWR)
        try:  # the lock is free between transactions: this writer let it go
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert backend.counts().pending == 7
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(10)
        backend.close()


def test_writers_of_two_processes_still_take_turns(tmp_path: Path) -> None:
    """The lock still orders writers: two processes submitting at once lose nothing."""
    db = tmp_path / "conveyor.db"
    SQLiteBackend(db).close()
    script = (
        "import sys\n"
        "from conveyor.backends.sqlite.engine import SQLiteBackend\n"
        "from conveyor.models import InputRef, Task\n"
        "b = SQLiteBackend(sys.argv[1])\n"
        "for i in range(300):\n"
        "    key = f'{sys.argv[2]}{i}.mp4'\n"
        "    b.submit(Task(kind='transcode', input=InputRef(bucket='input', key=key)))\n"
        "b.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(db), name], stderr=subprocess.PIPE)
        for name in ("p", "q")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    backend = SQLiteBackend(db)
    try:
        assert backend.counts().pending == 600
    finally:
        backend.close()
