"""Page processes: spawned, warm across tasks, capped in memory, one page at a time.

Everything that reads a submitted document (sniffing it, decoding an image,
opening the PDF, rendering and reading a page) runs in these processes, never
in the worker's own: in ``conveyor up`` the worker is the API's process.

Each process takes one job at a time over its own pipe, so the parent always
knows which page a process was on: a process that dies (past its memory
limit, or killed) or runs past the page timeout is replaced, and only that
page is retried or failed.  ``concurrent.futures.ProcessPoolExecutor`` could
do neither (a death breaks the whole pool, and with ``max_tasks_per_child``
it can hang for good on Python 3.11, CPython gh-115634), so processes are
recycled here by hand, every ``PAGES_PER_CHILD`` jobs.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle  # nosec B403
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from conveyor.errors import TaskCancelled
from conveyor.processors.docparse.limits import limit_memory

log = logging.getLogger(__name__)

PAGES_PER_CHILD = 100
IDLE_CLOSE_S = 120.0
START_TIMEOUT_S = 120.0  # a spawned process that never says it is ready is broken


class PagePoolBroken(RuntimeError):
    """Page processes cannot be started or keep failing for reasons not the input's."""


class JobTimedOut(RuntimeError):
    """A job ran past its time and its process was killed."""


class JobKilled(RuntimeError):
    """The process died while running a job (out of memory, a crash, a kill), twice."""


class _Pending:
    pass


PENDING = _Pending()  # no reply yet
DEAD = None  # the process is gone


def serve(conn: Connection, parent: int, memory_mb: int) -> None:
    """The page process's loop: one ``(function, argument)`` in, one reply out."""
    watch_parent(parent)
    try:
        limit_memory(memory_mb)
    except (ValueError, OSError) as exc:  # a hard limit below ours: keep the lower one
        log.warning("could not limit the page process's memory: %s", exc)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, arg = msg
        try:
            reply: tuple[str, Any] = ("ok", fn(arg))
        except BaseException as exc:  # MemoryError too: the page fails, the process lives
            reply = ("error", _portable(exc))
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError, MemoryError) as exc:
            conn.send(("error", RuntimeError(f"the result could not be sent back: {exc}")))


def _portable(exc: BaseException) -> BaseException:
    try:
        # bandit B301: a round trip of an exception this process made, to learn whether
        # the pipe to the parent can carry it; nothing from outside is loaded here
        pickle.loads(pickle.dumps(exc))  # nosec B301
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def watch_parent(parent: int) -> None:
    """Exit when the worker is gone, even if it was SIGKILLed."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="conveyor-parent-watch", daemon=True).start()


class PageProcess:
    """One spawned page process and our end of its pipe."""

    def __init__(self, ctx: Any, memory_mb: int) -> None:
        ours, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=serve,
            args=(theirs, os.getpid(), memory_mb),
            name="conveyor-docparse-page",
            daemon=True,
        )
        self.proc.start()
        theirs.close()
        self.conn: Connection = ours
        self.ready = False
        self.ready_at = 0.0
        self.jobs = 0
        self.started = time.monotonic()
        self.sent_at = 0.0

    def send(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.conn.send((fn, arg))
        self.jobs += 1
        self.sent_at = time.monotonic()

    def overdue(self, timeout_s: float) -> bool:
        """Has the job in hand run longer than ``timeout_s``?  Counted from when the
        process was ready for it: starting a process is not the page's time."""
        return self.time_left(timeout_s) < 0

    def time_left(self, timeout_s: float) -> float:
        if not self.ready:
            return timeout_s  # START_TIMEOUT_S covers a process that never starts
        return timeout_s - (time.monotonic() - max(self.sent_at, self.ready_at))

    def take(self) -> Any:
        """The reply to the job in hand: ``("ok", value)``, ``("error", exc)``,
        ``PENDING`` or ``DEAD``."""
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg[0] == "ready":
                    self.ready, self.ready_at = True, time.monotonic()
                    continue
                return msg
        except (EOFError, OSError):
            return DEAD
        if not self.proc.is_alive():
            return DEAD
        if not self.ready and time.monotonic() - self.started > START_TIMEOUT_S:
            self.kill()
            return DEAD
        return PENDING

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Ask it to leave (a recycle), and make sure it did."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(2)
        self.kill()


class PagePool:
    """Up to ``workers`` page processes shared by every docparse task of this worker.

    Spawning one and importing PDFium costs about a second, more than a dozen
    pages, so processes outlive a task; they are replaced every
    ``PAGES_PER_CHILD`` jobs and closed after ``IDLE_CLOSE_S`` without work.
    """

    def __init__(self, workers: int, memory_mb: int) -> None:
        self.workers = max(1, workers)
        self.memory_mb = memory_mb
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[PageProcess] = []
        self._alive = 0
        self._users = 0
        self._cond = threading.Condition()
        self._idle_timer: threading.Timer | None = None

    def acquire(self) -> None:
        with self._cond:
            self._users += 1
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

    def release(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0:
                self._idle_timer = threading.Timer(IDLE_CLOSE_S, self.close_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def checkout(self, timeout: float) -> PageProcess | None:
        """An idle process, a new one while there are fewer than ``workers``, or None
        if every process stays busy (with other tasks' pages) for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._idle:
                    proc = self._idle.pop()
                    if proc.proc.is_alive():
                        return proc
                    self._alive -= 1
                    proc.kill()
                if self._alive < self.workers:
                    self._alive += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        try:
            return PageProcess(self._ctx, self.memory_mb)
        except BaseException as exc:
            with self._cond:
                self._alive -= 1
                self._cond.notify_all()
            raise PagePoolBroken(f"a page process could not be started: {exc}") from exc

    def spare(self) -> int:
        """Processes no task is using now: idle, or not started yet."""
        with self._cond:
            return self.workers - (self._alive - len(self._idle))

    def checkin(self, proc: PageProcess, healthy: bool = True) -> None:
        """Back to the pool; a process that failed, timed out or did its share is replaced."""
        retire = not healthy or proc.jobs >= PAGES_PER_CHILD or not proc.proc.is_alive()
        if retire:
            if healthy:
                proc.stop()
            else:
                proc.kill()
        with self._cond:
            if retire:
                self._alive -= 1
            else:
                self._idle.append(proc)
            self._cond.notify_all()

    def close_if_idle(self) -> None:
        with self._cond:
            if self._users:
                return
            idle, self._idle = self._idle, []
            self._alive -= len(idle)
        for proc in idle:
            proc.stop()

    def close(self) -> None:
        with self._cond:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            idle, self._idle = self._idle, []
            self._alive -= len(idle)
        for proc in idle:
            proc.stop()


_pools: dict[tuple[int, int], PagePool] = {}
_pools_lock = threading.Lock()


def shared_pool(workers: int, memory_mb: int) -> PagePool:
    with _pools_lock:
        key = (max(1, workers), memory_mb)
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = PagePool(*key)
        return pool


@atexit.register
def close_pools() -> None:
    """Idle page processes would otherwise outlive the worker."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.close()


def wait_any(procs: list[PageProcess], timeout: float, job_timeout_s: float) -> None:
    """Until one of ``procs`` replies or dies, one runs out of time, or ``timeout`` s."""
    for p in procs:
        timeout = min(timeout, max(0.005, p.time_left(job_timeout_s)))
    if procs:
        wait([p.conn for p in procs] + [p.proc.sentinel for p in procs], timeout)
    else:
        time.sleep(timeout)


def call(
    pool: PagePool,
    fn: Callable[[Any], Any],
    arg: Any,
    *,
    cancel: threading.Event,
    timeout_s: float,
) -> Any:
    """Run one job in a page process and return its value (or raise its exception).

    A process that dies on the job is replaced and the job tried once more;
    a second death raises ``JobKilled``, running past ``timeout_s`` raises
    ``JobTimedOut`` (the process is killed either way)."""
    pool.acquire()
    try:
        for _ in range(2):
            proc = None
            while proc is None:
                if cancel.is_set():
                    raise TaskCancelled("cancelled")
                proc = pool.checkout(timeout=0.5)
            try:
                proc.send(fn, arg)
            except (OSError, ValueError):
                pool.checkin(proc, healthy=False)
                continue
            while True:
                msg = proc.take()
                if msg is not PENDING:
                    break
                if cancel.is_set():
                    pool.checkin(proc, healthy=False)
                    raise TaskCancelled("cancelled")
                if proc.overdue(timeout_s):
                    pool.checkin(proc, healthy=False)
                    raise JobTimedOut(f"it took longer than {timeout_s:g} s")
                wait_any([proc], 0.5, timeout_s)
            if msg is DEAD:
                pool.checkin(proc, healthy=False)
                if not proc.ready:
                    raise PagePoolBroken("a page process died before it was ready")
                continue
            pool.checkin(proc)
            status, value = msg
            if status == "error":
                raise value
            return value
        raise JobKilled("the page process died on it twice")
    finally:
        pool.release()
