"""Expired leases must go back to the queue even when no worker is running."""

from __future__ import annotations

import logging
import threading

from conveyor.backends import Backend

log = logging.getLogger("conveyor.reaper")


class Reaper:
    def __init__(self, backend: Backend, interval: float) -> None:
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="conveyor-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                n = self.backend.reap()
                if n:
                    log.warning("Reaped %d task(s) whose worker stopped heartbeating", n)
            except Exception:
                log.exception("reap failed; will retry")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
