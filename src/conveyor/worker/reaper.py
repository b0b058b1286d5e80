"""Expired leases must go back to the queue even when no worker is running; and a
commit of outputs that a crash interrupted must be finished (conveyor.outputs)."""

from __future__ import annotations

import logging
import threading
import time

from conveyor import outputs
from conveyor.backends import WorkerQueue
from conveyor.storage import BlobStore

log = logging.getLogger("conveyor.reaper")

SWEEP_EVERY_S = 60.0


class Reaper:
    def __init__(
        self,
        queue: WorkerQueue,
        interval: float,
        storage: BlobStore | None = None,
        output_bucket: str = "output",
        store: outputs.SweepBackend | None = None,
    ) -> None:
        """The staging sweep runs when both ``storage`` and ``store`` (where the
        sweep looks tasks up and records what it published) are given."""
        self.queue = queue
        self.interval = interval
        self.storage = storage
        self.store = store
        self.output_bucket = output_bucket
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="conveyor-reaper", daemon=True)
        self._last_sweep = 0.0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                n = self.queue.reap()
                if n:
                    log.warning("Reaped %d task(s) whose worker stopped heartbeating", n)
            except Exception:
                log.exception("reap failed; will retry")
            self._maybe_sweep()

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if self.storage is None or self.store is None:
            return
        if now - self._last_sweep < max(SWEEP_EVERY_S, self.interval):
            return
        self._last_sweep = now
        try:
            outputs.sweep(self.store, self.storage, self.output_bucket)
        except Exception:
            log.warning("staging sweep failed; will retry", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
