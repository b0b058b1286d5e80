"""Helpers shared by the integration tests that drive the real worker loop in-process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings
from conveyor.models import Task
from conveyor.processors import ProcessorRegistry
from conveyor.processors.base import Processor
from conveyor.storage.local import LocalBlobStore
from conveyor.worker.loop import Worker


@contextmanager
def worker_on_sqlite(
    settings: Settings,
    processors: dict[str, Processor],
    *,
    grace: float,
    backoff_base: float | None = None,
) -> Iterator[tuple[SQLiteBackend, LocalBlobStore]]:
    """A real ``Worker`` (two slots) on a SQLite file and a local store in
    ``settings.data_dir``, running ``processors``; stopped with ``grace`` and closed after."""
    backend = SQLiteBackend(settings.data_dir / "c.db", backoff_base=backoff_base)
    store = LocalBlobStore(settings.data_dir / "buckets")
    worker = Worker(
        settings, backend, store, ProcessorRegistry(processors), store=backend, concurrency=2
    )
    worker.start()
    try:
        yield backend, store
    finally:
        worker.stop(grace=grace)
        backend.close()


def final_task(backend: SQLiteBackend, task_id: str, timeout: float, poll: float = 0.05) -> Task:
    """The task once final; an assertion naming its status if it is not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        t = backend.get(task_id)
        assert t is not None, f"task {task_id} is gone"
        if t.status.is_final:
            return t
        if time.monotonic() >= deadline:
            raise AssertionError(f"task {task_id} is still {t.status} after {timeout} s")
        time.sleep(poll)
