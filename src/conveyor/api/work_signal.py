"""One thread waits for new work on behalf of every long-polling remote worker.

``WorkerQueue.wait_for_work`` blocks a thread; an API serving fifty idle remote
workers cannot park fifty threads of its pool on it.  ``WorkSignal`` runs a
single thread that calls ``wait_for_work`` in a loop and, whenever it returns
early (a submit, a retry, a release...), bumps a generation counter and wakes
every waiting request on the event loop.

The generation closes the race between a worker's empty claim and its next
wait: a claim reports the generation read *before* its query, and a wait
that names an older generation returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Protocol

log = logging.getLogger("conveyor.api.work_signal")

# How long one backend wait lasts; a return well before this counts as a wake.
POLL_S = 2.0
# Never wake waiters more than this often (engines that return early spuriously).
MIN_INTERVAL_S = 0.02


class Waiter(Protocol):
    """What blocks until work may be there (``WorkerQueue.wait_for_work``'s signature)."""

    def wait_for_work(self, timeout: float) -> None: ...


class WorkSignal:
    def __init__(self, waiter: Waiter) -> None:
        """``waiter``: the service's ``WorkerProtocol`` (its engine's ``wait_for_work``)."""
        self._waiter = waiter
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        self._ensure_started()
        with self._lock:
            return self._generation

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="conveyor-work-signal", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        # an engine's first calls may return at once (SQLite binds its wake socket, and
        # catches up on work announced before this thread first looked): make them here,
        # so that no waiter is woken for nothing when the signal starts
        for _ in range(2):
            try:
                self._waiter.wait_for_work(0)
            except Exception:
                break
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._waiter.wait_for_work(POLL_S)
            except Exception:
                if self._stop.is_set():  # the engine closed under us at shutdown
                    break
                log.exception("waiting for work failed; remote workers fall back to polling")
                self._stop.wait(1.0)
                continue
            if self._stop.is_set():
                break
            if time.monotonic() - started < POLL_S * 0.9:
                self.wake()
                self._stop.wait(MIN_INTERVAL_S)

    def wake(self) -> None:
        """Announce that work may be available to every waiting request."""
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, since: int | None, timeout: float) -> int:
        """Wait up to ``timeout`` s for a wake after generation ``since``; return the new one."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if since is not None and since != self._generation:
                return self._generation
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        with self._lock:
            return self._generation

    def stop(self) -> None:
        """Stop waking; the thread ends when its current wait returns (or the engine closes)."""
        self._stop.set()
        self.wake()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
