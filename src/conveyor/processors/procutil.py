"""Child processes that can be killed as a group and that die with the worker.

Processors start encoders in their own process group so that a cancel can
kill the whole tree (ffmpeg may spawn helpers), and ask the kernel to kill
the child when the worker thread that started it dies, so a worker killed
with SIGKILL does not leave an orphan ffmpeg burning a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _prctl = _libc.prctl
    except (OSError, AttributeError):
        _prctl = None


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when its parent thread exits (Linux only)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def popen_group(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session (and so process group)."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        argv, start_new_session=True, preexec_fn=die_with_parent, **kwargs
    )


def kill_group(proc: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    """SIGTERM the child's process group, then SIGKILL after ``grace`` s; reap it."""
    if proc.poll() is not None:
        _kill_pgid(proc.pid, signal.SIGKILL)  # stray grandchildren
        return
    _kill_pgid(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _kill_pgid(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _kill_pgid(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
