"""The one blocking entry point of a worker process (the worker loop, the Slurm
executor): start, wait for SIGTERM or SIGINT, stop gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("conveyor.worker")


def run_until_signalled(
    start: Callable[[], None], stop: Callable[[], None], done: threading.Event
) -> None:
    def _on_signal(signum: int, _frame: object) -> None:
        log.info("Received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    start()
    while not done.wait(1.0):
        pass
    stop()
