"""Peak resident memory of a process tree, sampled: what a worker and its children hold."""

from __future__ import annotations

import os
import threading


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a pool may start processes from any thread)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return found


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "?"
    if pid == os.getpid():
        return "worker"
    if b"spawn_main" in b" ".join(argv):
        return "page process"
    if b"resource_tracker" in b" ".join(argv):
        return "resource tracker"
    return os.path.basename(argv[0].decode(errors="replace")) or "?"


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


class TreeRss:
    """Peak of the summed RSS of this process and all its descendants.

    Descendants that were already running when the measure started and are not
    page processes (servers a test session's fixtures started: PostgreSQL, an S3
    server, moto, dockerd) are left out: they are not part of a worker.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kib = 0
        self.peak_procs = 0
        self.peak_parts: list[tuple[str, int]] = []  # (process, KiB) at the peak
        self._stop = threading.Event()
        self._unrelated: set[int] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = [p for p in _tree(me) if p not in self._unrelated]
            sizes = {p: _rss_kib(p) for p in pids}
            total = sum(sizes.values())
            if total > self.peak_kib:
                self.peak_kib, self.peak_procs = total, len(pids)
                self.peak_parts = sorted(
                    ((_name(p), kib) for p, kib in sizes.items() if kib), key=lambda x: -x[1]
                )
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRss:
        me = os.getpid()
        self._unrelated = {
            p for p in _tree(me) if p != me and _name(p) not in ("page process", "resource tracker")
        }
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
