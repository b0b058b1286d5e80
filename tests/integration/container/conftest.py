"""Container tasks run by a real in-process worker against a real engine or real processes.

``harness`` gives a SQLite backend, a local bucket store and a worker factory;
for Docker, ``docker_engine`` starts the test's own dockerd (tests/dockerd.py).
Timings are short so that retries, timeouts and grace periods take seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings, load_settings
from conveyor.models import Task, TaskStatus
from conveyor.processors import ProcessorRegistry
from conveyor.processors.container import ContainerProcessor
from conveyor.service import ConveyorService, SubmitRequest
from conveyor.storage.local import LocalBlobStore
from conveyor.worker.loop import Worker
from tests import dockerd

docker_engine = dockerd.docker_engine

GRACE_S = 2.0


@dataclass
class Harness:
    settings: Settings
    service: ConveyorService
    workers: list[Worker] = field(default_factory=list)

    def worker(self, gpus: str | None = None, **kw: Any) -> Worker:
        """A worker on this harness's queue; ``gpus`` gives it its own GPU inventory."""
        settings = self.settings
        if gpus is not None:
            settings = settings.model_copy(update={"gpus": gpus})
        registry = ProcessorRegistry({"container": ContainerProcessor(settings)})
        service = self.service
        w = Worker(
            settings, service.backend, service.storage, registry, store=service.backend, **kw
        )
        w.start()
        self.workers.append(w)
        return w

    def submit(self, **params: Any) -> Task:
        top = {k: params.pop(k) for k in ("max_attempts", "timeout_s") if k in params}
        return self.service.submit(SubmitRequest(kind="container", params=params, **top)).task

    def wait(
        self,
        task_id: str,
        statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
        timeout: float = 60,
    ) -> Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.service.get(task_id)
            # a completed task's outputs are visible once moved from staging (committed)
            if t.status.value in statuses and not any(o.staged_key for o in t.outputs):
                return t
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} not in {statuses} after {timeout}s: {t}")

    def wait_log(self, task_id: str, text: str, timeout: float = 30) -> float:
        """Seconds until ``text`` shows in the stored log (not the worker's memory)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if any(text in ln.line for ln in self.service.logs(task_id, limit=10000)):
                return time.monotonic() - start
            time.sleep(0.05)
        lines = [ln.line for ln in self.service.logs(task_id, limit=10000)]
        raise AssertionError(f"{text!r} not in the log of {task_id} after {timeout}s: {lines}")

    def lines(self, task_id: str, attempt: int | None = None) -> list[str]:
        return [ln.line for ln in self.service.logs(task_id, attempt=attempt, limit=10000)]


def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Settings:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    return load_settings(
        data_dir=tmp_path,
        heartbeat_interval=0.2,
        lease_seconds=3.0,
        reap_interval=0.2,
        poll_interval=0.1,
        shutdown_grace=1.0,
        retry_backoff_base=0.05,
        container_grace=GRACE_S,
        container_network="none",
        **kw,
    )


@pytest.fixture
def harness_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        settings = make_settings(tmp_path, monkeypatch, **kw)
        backend = SQLiteBackend(settings.data_dir / "c.db", backoff_base=0.05)
        store = LocalBlobStore(settings.data_dir / "buckets")
        registry = ProcessorRegistry({"container": ContainerProcessor(settings)})
        h = Harness(settings, ConveyorService(settings, backend, store, registry))
        made.append(h)
        return h

    yield make
    for h in made:
        for w in h.workers:
            w.stop(grace=0.5)
        h.service.backend.close()


@pytest.fixture
def docker_harness(
    harness_factory: Callable[..., Harness], docker_engine: dockerd.DockerEngine
) -> Harness:
    return harness_factory(container_runner="docker", docker_host=docker_engine.host)


@pytest.fixture
def local_harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory(container_runner="local")


def final(status: TaskStatus) -> bool:
    return status.is_final
