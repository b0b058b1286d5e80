"""The worker loop with a small in-test processor: lifecycle paths without ffmpeg.

The processor here is a real Processor subclass that sleeps and writes a
file; it stands in for no component under test (the worker is the subject).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings, load_settings
from conveyor.errors import InputRejected, LeaseLost, TaskCancelled
from conveyor.models import OutputFile, Task, TaskStatus
from conveyor.processors import ProcessorContext, ProcessorRegistry
from conveyor.processors.base import Processor
from conveyor.storage.local import LocalBlobStore
from conveyor.worker.loop import PREFETCH_MAX, PREFETCH_WAIT_S, Worker


class SleepParams(BaseModel):
    seconds: float = 0.0
    fail: str | None = None


class SleepProcessor(Processor):
    kind: ClassVar[str] = "sleep"
    params_model: ClassVar[type[BaseModel]] = SleepParams
    runs: ClassVar[list[str]] = []
    # how many run() calls are under way, and the most seen at once
    running: ClassVar[list[int]] = [0, 0]
    lock: ClassVar[threading.Lock] = threading.Lock()

    def requires_input(self) -> bool:
        return False

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        with SleepProcessor.lock:
            SleepProcessor.running[0] += 1
            SleepProcessor.running[1] = max(SleepProcessor.running)
        try:
            return self._run(ctx)
        finally:
            with SleepProcessor.lock:
                SleepProcessor.running[0] -= 1

    def _run(self, ctx: ProcessorContext) -> list[OutputFile]:
        p = SleepParams.model_validate(ctx.task.params)
        SleepProcessor.runs.append(ctx.task.id)
        ctx.log("sleeping")
        deadline = time.monotonic() + p.seconds
        while time.monotonic() < deadline:
            if ctx.cancel_event.wait(0.02):
                raise TaskCancelled("stopped")
            ctx.report_progress(50.0, "sleeping", "")
        if p.fail == "permanent":
            raise InputRejected("input is not a readable video")
        if p.fail == "transient":
            raise RuntimeError("flaky")
        out = ctx.workdir / "out.txt"
        out.write_text(ctx.task.id)
        info = ctx.storage.put_file(ctx.output_bucket, f"{ctx.task.id}/out.txt", out)
        return [OutputFile(name="out", bucket=info.bucket, key=info.key, size=info.size)]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    return load_settings(
        data_dir=tmp_path,
        heartbeat_interval=0.1,
        lease_seconds=1.0,
        reap_interval=0.1,
        poll_interval=0.1,
        shutdown_grace=0.5,
        retry_backoff_base=0.05,
    )


@pytest.fixture
def parts(settings: Settings) -> Iterator[tuple[SQLiteBackend, LocalBlobStore, ProcessorRegistry]]:
    backend = SQLiteBackend(settings.data_dir / "c.db", backoff_base=0.05)
    store = LocalBlobStore(settings.data_dir / "buckets")
    registry = ProcessorRegistry({"sleep": SleepProcessor(settings)})
    yield backend, store, registry
    backend.close()


def _worker(
    settings: Settings, parts: tuple[SQLiteBackend, LocalBlobStore, ProcessorRegistry], **kw: object
) -> Worker:
    backend, blobs, registry = parts
    w = Worker(settings, backend, blobs, registry, store=backend, **kw)
    w.start()
    return w


def _wait(backend: SQLiteBackend, task_id: str, status: TaskStatus, timeout: float = 10) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = backend.get(task_id)
        assert t is not None
        if t.status == status:
            return t
        time.sleep(0.02)
    raise AssertionError(f"{task_id} is {t.status}, expected {status}")


def test_runs_and_logs(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"seconds": 0.2}))
    w = _worker(settings, parts)
    try:
        done = _wait(backend, t.id, TaskStatus.COMPLETED)
        # the log is whole, in order, once the outcome shows (same transaction)
        lines = [ln.line for ln in backend.read_logs(t.id)]
        assert lines[0].startswith("Task received") and lines[-1].startswith("Task completed")
        assert "sleeping" in lines
        assert done.outputs[0].key == f"{t.id}/out.txt"
        assert done.history[0].outcome == "completed"
        assert [wi.id for wi in backend.workers()] == [w.id]
    finally:
        w.stop()
    assert not w.temp_root.exists(), "the worker's work folder is removed with its tasks'"


def test_many_short_tasks_each_complete_once_with_their_logs(
    settings: Settings, parts: tuple
) -> None:
    """Completions batched: every task completed once, its log whole when it shows."""
    backend = parts[0]
    ids = [backend.submit(Task(kind="sleep"))[0].id for _ in range(60)]
    w = _worker(settings, parts, concurrency=4)
    try:
        for i in ids:
            done = _wait(backend, i, TaskStatus.COMPLETED)
            assert [a.outcome for a in done.history] == ["completed"]
            lines = [ln.line for ln in backend.read_logs(i)]
            assert lines[0].startswith("Task received"), lines
            assert lines[-1] == f"Task completed: {i} with 1 output(s)", lines
    finally:
        w.stop()


def test_permanent_failure_not_retried(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"fail": "permanent"}))
    w = _worker(settings, parts)
    try:
        failed = _wait(backend, t.id, TaskStatus.FAILED)
        assert failed.attempts == 1
        assert failed.error == "input is not a readable video"
        assert failed.error_code == "invalid_input"
    finally:
        w.stop()


def test_transient_failure_retried_then_failed(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"fail": "transient"}, max_attempts=3))
    w = _worker(settings, parts)
    try:
        failed = _wait(backend, t.id, TaskStatus.FAILED)
        assert failed.attempts == 3
        assert [a.outcome for a in failed.history] == ["retry", "retry", "failed"]
        assert "flaky" in (failed.error or "")
    finally:
        w.stop()


def test_cancel_running(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"seconds": 30}))
    w = _worker(settings, parts)
    try:
        _wait(backend, t.id, TaskStatus.PROCESSING)
        started = time.monotonic()
        backend.cancel(t.id)
        cancelled = _wait(backend, t.id, TaskStatus.CANCELLED)
        assert time.monotonic() - started < 5
        assert cancelled.error_code == "cancelled"
    finally:
        w.stop()


def test_timeout_is_retryable(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(
        Task(kind="sleep", params={"seconds": 5, "timeout_s": 0.2}, max_attempts=1)
    )
    w = _worker(settings, parts)
    try:
        failed = _wait(backend, t.id, TaskStatus.FAILED)
        assert failed.error_code == "timeout"
        assert "timed out" in (failed.error or "")
    finally:
        w.stop()


def test_graceful_stop_releases(settings: Settings, parts: tuple) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"seconds": 30}))
    w = _worker(settings, parts)
    _wait(backend, t.id, TaskStatus.PROCESSING)
    w.stop(grace=0.2)
    released = backend.get(t.id)
    assert released is not None
    assert released.status == TaskStatus.PENDING
    assert released.attempts == 0
    assert released.history[-1].outcome == "released"


def test_dead_worker_lease_expires_and_old_lease_is_fenced(
    settings: Settings, parts: tuple
) -> None:
    backend = parts[0]
    t, _ = backend.submit(Task(kind="sleep", params={"seconds": 0.1}))
    # a "worker" that claims and then dies: no heartbeats
    [dead] = backend.claim("dead-worker", ["sleep"], 1, lease_s=0.3)
    w = _worker(settings, parts)
    try:
        done = _wait(backend, t.id, TaskStatus.COMPLETED)
        assert done.attempts == 2
        assert done.history[0].outcome == "lease_expired"
        with pytest.raises(LeaseLost):
            backend.complete(dead.lease, [])
    finally:
        w.stop()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_concurrency_limit(settings: Settings, parts: tuple, prefetch: int) -> None:
    """At most ``concurrency`` tasks run at once; a worker holds at most ``prefetch``
    more (claimed, waiting for a slot, their leases renewed), plus those whose
    completion is on its way (their threads already run the next ones)."""
    backend = parts[0]
    ids = [backend.submit(Task(kind="sleep", params={"seconds": 0.3}))[0].id for _ in range(8)]
    SleepProcessor.running[:] = [0, 0]
    w = _worker(settings, parts, concurrency=2, prefetch=prefetch)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, backend.counts().processing)
            time.sleep(0.01)

    th = threading.Thread(target=watch)
    th.start()
    try:
        for i in ids:
            _wait(backend, i, TaskStatus.COMPLETED)
    finally:
        stop.set()
        th.join()
        w.stop()
    assert SleepProcessor.running[1] == 2
    assert 2 <= peak <= 2 + prefetch + 2


def test_prefetch_deepens_for_short_tasks_unless_the_operator_set_it(
    settings: Settings, parts: tuple
) -> None:
    """By default the held tasks wait about PREFETCH_WAIT_S for a slot: tasks of a
    millisecond are claimed up to PREFETCH_MAX beyond the slots, tasks of 0.1 s as many
    as the concurrency; none at a second; a prefetch the operator set stays put."""
    backend, blobs, registry = parts
    default = Worker(settings, backend, blobs, registry, store=backend, concurrency=4)
    fixed = Worker(settings, backend, blobs, registry, store=backend, concurrency=4, prefetch=2)
    seen = {}
    for avg in (None, 0.0005, 0.01, 0.1, 2.0):
        default._run_avg = fixed._run_avg = avg
        seen[avg] = (default._prefetch_allowance(), fixed._prefetch_allowance())
    assert seen == {
        None: (0, 0),  # nothing known yet: claim for the free slots only
        0.0005: (PREFETCH_MAX, 2),
        0.01: (int(4 * PREFETCH_WAIT_S / 0.01), 2),
        0.1: (4, 2),
        2.0: (0, 0),
    }


class StealProcessor(Processor):
    """Loses its own lease while it runs: the lease is expired, reaped and claimed by
    another worker, then the processor returns as if nothing happened."""

    kind: ClassVar[str] = "steal"
    params_model: ClassVar[type[BaseModel]] = SleepParams
    backend: ClassVar[SQLiteBackend | None] = None

    def requires_input(self) -> bool:
        return False

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        backend = StealProcessor.backend
        assert backend is not None
        ctx.log("working")
        conn = sqlite3.connect(backend.path, timeout=30)
        with conn:
            conn.execute("UPDATE tasks SET lease_expires = 0 WHERE id = ?", (ctx.task.id,))
        conn.close()
        assert backend.reap() == 1
        deadline = time.monotonic() + 5  # after the retry's back-off
        while not (got := backend.claim("thief", ["steal"], 1, 60.0)):
            assert time.monotonic() < deadline, "the reaped task never came back"
            time.sleep(0.02)
        assert [c.task.id for c in got] == [ctx.task.id]
        return []


def test_a_completion_handed_off_is_refused_when_the_lease_was_lost(
    settings: Settings, parts: tuple
) -> None:
    """A task with nothing to publish hands its completion to the batch; the batch finds
    its lease taken by another worker, so it is refused and the attempt abandoned: the
    thief's attempt is untouched and the stale one's log says so, and never completed."""
    backend, blobs, _ = parts
    StealProcessor.backend = backend
    slow_heartbeat = settings.model_copy(update={"heartbeat_interval": 30.0})
    registry = ProcessorRegistry({"steal": StealProcessor(settings)})
    t, _ = backend.submit(Task(kind="steal", max_attempts=3))
    # one slot, no prefetch: the worker cannot claim the task back while it runs
    w = Worker(slow_heartbeat, backend, blobs, registry, store=backend, concurrency=1, prefetch=0)
    w.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [(ln.attempt, ln.line) for ln in backend.read_logs(t.id)]
            if any(line.startswith("Task abandoned") for _, line in lines):
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"the stale attempt was not abandoned: {lines}")
    finally:
        w.stop()
    task = backend.get(t.id)
    assert task is not None and task.status == TaskStatus.PROCESSING
    assert task.worker_id == "thief" and task.attempts == 2
    assert [a.outcome for a in task.history] == ["lease_expired", None]
    assert all(att == 1 for att, _ in lines)
    assert not any(line.startswith("Task completed") for _, line in lines), lines
