"""``Backend.metrics_snapshot``: what /metrics reads, the same on every engine."""

from __future__ import annotations

from conveyor.backends.base import Backend
from conveyor.metrics_data import DURATION_BUCKETS
from conveyor.models import OutputFile, TaskStatus

from .test_backend_contract import (
    SHORT_LEASE_S,
    claim_one,
    expire,
    get,
    reclaim,
    submit,
    unique_kind,
)


def test_snapshot_counts_states_retries_expiries_and_times(backend: Backend) -> None:
    kind = unique_kind()
    done = submit(backend, kind=kind)
    c = claim_one(backend, done)
    backend.complete(c.lease, [OutputFile(name="x", bucket="output", key="x.mp4")])

    flaky = submit(backend, kind=kind, max_attempts=3)
    first = claim_one(backend, flaky, lease_s=SHORT_LEASE_S)
    expire(first)
    assert backend.reap() == 1
    second = reclaim(backend, flaky, "w2")
    backend.fail(second.lease, "broken input", retryable=False)

    submit(backend, kind=kind)  # waits
    gone = submit(backend, kind=kind)
    backend.cancel(gone.id)

    snap = backend.metrics_snapshot()
    assert snap.tasks[kind] == {"completed": 1, "failed": 1, "pending": 1, "cancelled": 1}
    assert snap.retries[kind] == 1
    assert snap.lease_expiries[kind] == 1

    run = snap.duration[kind]
    assert run.count == 1 and len(run.buckets) == len(DURATION_BUCKETS)
    assert run.buckets == sorted(run.buckets) and run.buckets[-1] <= run.count
    finished = get(backend, done.id)
    assert finished.status == TaskStatus.COMPLETED
    assert finished.started_at is not None and finished.finished_at is not None
    expected = (finished.finished_at - finished.started_at).total_seconds()
    assert abs(run.sum - expected) < 0.05
    assert run.buckets[0] == 1, "a task that ran for milliseconds is in the first bucket"

    wait = snap.queue_wait[kind]
    assert wait.count == 2, "the two tasks that started; the waiting and the cancelled did not"


def test_snapshot_splits_delayed_from_pending(backend: Backend) -> None:
    kind = unique_kind()
    task = submit(backend, kind=kind, max_attempts=3)
    c = claim_one(backend, task)
    backend.fail(c.lease, "try later", retryable=True)
    slow = backend.metrics_snapshot().tasks[kind]
    # the back-off may already have passed on a slow engine: then it is plain pending
    assert slow in ({"delayed": 1}, {"pending": 1})
