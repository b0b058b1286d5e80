"""Parent and child tasks (``WorkerQueue.spawn_children``, ``TaskStore.children``): the
contract every engine keeps (``conftest.BACKEND_ENGINES``; ``CONVEYOR_TEST_ENGINES``
filters).  See ``conveyor.backends.base`` and ``conveyor.backends.rules``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from conveyor.backends.base import Backend, Completion
from conveyor.backends.rules import CHILD_FAILED_CODE, CHILDREN_HOLD
from conveyor.errors import LeaseLost
from conveyor.models import ClaimedTask, OutputFile, Task, TaskStatus, WorkerInfo

from .conftest import BackendOpener
from .test_backend_contract import (
    LONG_LEASE_S,
    SHORT_LEASE_S,
    claim_one,
    eventually,
    make_task,
    submit,
)


def _children(parent: Task, n: int) -> list[Task]:
    """``n`` children of the parent's kind, on its input (what a worker may spawn)."""
    return [make_task(kind=parent.kind, input=parent.input, params={"part": i}) for i in range(n)]


def _spawned(backend: Backend, n: int = 3, **parent_fields: Any) -> tuple[Task, str, ClaimedTask]:
    """A parent (of a kind of its own) claimed and made to spawn ``n`` children."""
    parent = submit(backend, submitted_by="alice", priority=2, **parent_fields)
    held = claim_one(backend, parent)
    backend.spawn_children(held.lease, _children(parent, n))
    return parent, parent.kind, held


def _claim_kind(
    backend: Backend, kind: str, n: int, lease_s: float = LONG_LEASE_S
) -> list[ClaimedTask]:
    """Claim ``n`` tasks of ``kind``, one call at a time, in claim order."""
    got: list[ClaimedTask] = []

    def more() -> bool:
        got.extend(backend.claim("w2", [kind], 1, lease_s))
        return len(got) >= n

    eventually(more)
    return got


def test_spawn_stores_children_and_holds_the_parent(backend: Backend) -> None:
    parent = submit(backend, submitted_by="alice", priority=2)
    held = claim_one(backend, parent)
    out = backend.spawn_children(held.lease, _children(parent, 3))
    assert out.id == parent.id
    assert out.status == TaskStatus.PENDING
    assert out.children == 3
    assert out.attempts == 0  # the attempt that spawned is not counted
    assert out.waiting_for_children and out.not_before == CHILDREN_HOLD
    assert out.history[-1].outcome == "spawned"
    kids = backend.children(parent.id)
    assert [k.params["part"] for k in kids] == [0, 1, 2]
    for k in kids:
        assert k.parent_id == parent.id
        assert k.status == TaskStatus.PENDING
        assert k.submitted_by == "alice"
        assert k.priority == 2
    got = backend.get(parent.id)
    assert got is not None and got.waiting_for_children


def test_spawn_again_with_the_same_lease_inserts_nothing(backend: Backend) -> None:
    parent = submit(backend)
    held = claim_one(backend, parent)
    first = backend.spawn_children(held.lease, _children(parent, 2))
    again = backend.spawn_children(held.lease, _children(parent, 2))
    assert again.id == first.id and again.children == 2
    assert len(backend.children(parent.id)) == 2


def test_a_held_parent_is_not_claimable(backend: Backend) -> None:
    parent, kind, _ = _spawned(backend, 2)
    kids = _claim_kind(backend, kind, 2)
    assert parent.id not in {k.task.id for k in kids}
    assert {k.task.parent_id for k in kids} == {parent.id}
    assert backend.claim("w3", [kind], 5, LONG_LEASE_S) == []


def test_last_child_completed_makes_the_parent_claimable(backend: Backend) -> None:
    parent, kind, _ = _spawned(backend, 3)
    kids = _claim_kind(backend, kind, 3)
    out = OutputFile(name="chunk", bucket="out", key="c.mp4", size=1)
    backend.complete(kids[0].lease, [out])
    # one completed alone and two in one batch: the parent waits for the last
    assert backend.claim("w3", [parent.kind], 1, LONG_LEASE_S) == []
    got = backend.get(parent.id)
    assert got is not None and got.waiting_for_children
    backend.complete_many([Completion(k.lease, [out]) for k in kids[1:]])
    again = eventually(lambda: backend.claim("w3", [parent.kind], 1, LONG_LEASE_S))
    assert again[0].task.id == parent.id
    assert again[0].task.children == 3  # its next run does what comes after the children
    assert again[0].task.attempts == 1
    assert [k.status for k in backend.children(parent.id)] == [TaskStatus.COMPLETED] * 3


def test_two_last_children_completed_at_once_wake_the_parent(
    open_backend: BackendOpener,
) -> None:
    """Each completion in its own handle (as two workers), both at once: one of them
    must see the other completed and wake the parent."""
    for _ in range(3):
        a_handle, b_handle = open_backend(), open_backend()
        parent, kind, _ = _spawned(a_handle, 2)
        kids = _claim_kind(a_handle, kind, 2)
        go = threading.Barrier(2)

        def finish(handle: Backend, claimed: ClaimedTask, go: threading.Barrier = go) -> None:
            go.wait()
            handle.complete(claimed.lease, [OutputFile(name="c", bucket="o", key="c", size=1)])

        threads = [
            threading.Thread(target=finish, args=(h, k))
            for h, k in zip((a_handle, b_handle), kids, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        again = eventually(lambda: a_handle.claim("w3", [kind], 1, LONG_LEASE_S))  # noqa: B023
        assert again[0].task.id == parent.id


def test_a_child_failed_for_good_fails_the_parent_and_cancels_its_siblings(
    backend: Backend,
) -> None:
    parent, kind, _ = _spawned(backend, 3)
    a, b = _claim_kind(backend, kind, 2)
    backend.fail(a.lease, "chunk 0 would not encode", retryable=False)
    got = backend.get(parent.id)
    assert got is not None and got.status == TaskStatus.FAILED
    assert got.error_code == CHILD_FAILED_CODE
    assert a.task.id in (got.error or "") and "chunk 0 would not encode" in (got.error or "")
    by_id = {k.id: k for k in backend.children(parent.id)}
    assert by_id[a.task.id].status == TaskStatus.FAILED
    assert by_id[b.task.id].status == TaskStatus.PROCESSING
    assert by_id[b.task.id].cancel_requested  # running: its worker is asked to stop
    (rest,) = [k for k in by_id.values() if k.id not in (a.task.id, b.task.id)]
    assert rest.status == TaskStatus.CANCELLED  # pending: cancelled at once
    backend.fail(b.lease, "cancelled by request", retryable=False, code="cancelled")
    got = backend.get(parent.id)
    assert got is not None and got.status == TaskStatus.FAILED  # unchanged by the sibling


def test_a_retryable_child_failure_retries_only_that_child(backend: Backend) -> None:
    parent, kind, _ = _spawned(backend, 2, max_attempts=3)
    a, _b = _claim_kind(backend, kind, 2)
    backend.fail(a.lease, "transient", retryable=True)
    got = backend.get(parent.id)
    assert got is not None and got.waiting_for_children
    child = backend.get(a.task.id)
    assert child is not None and child.status == TaskStatus.PENDING and child.attempts == 1


def test_cancel_parent_cancels_its_children(backend: Backend) -> None:
    parent, kind, _ = _spawned(backend, 3)
    (running,) = _claim_kind(backend, kind, 1)
    out = backend.cancel(parent.id)
    assert out.status == TaskStatus.CANCELLED
    by_id = {k.id: k for k in backend.children(parent.id)}
    assert by_id[running.task.id].status == TaskStatus.PROCESSING
    assert by_id[running.task.id].cancel_requested
    others = [k for k in by_id.values() if k.id != running.task.id]
    assert [k.status for k in others] == [TaskStatus.CANCELLED] * 2
    hb = backend.heartbeat(_worker("w2"), [running.lease], LONG_LEASE_S)
    assert running.task.id in hb.cancel


def test_lost_lease_spawns_nothing(open_backend: BackendOpener) -> None:
    backend = open_backend()
    parent = submit(backend, max_attempts=3)
    held = claim_one(backend, parent, lease_s=SHORT_LEASE_S)
    time.sleep(SHORT_LEASE_S + 0.1)
    assert backend.reap() >= 1
    with pytest.raises(LeaseLost):
        backend.spawn_children(held.lease, _children(parent, 2))
    assert backend.children(parent.id) == []
    got = backend.get(parent.id)
    assert got is not None and got.children == 0 and not got.waiting_for_children


def test_reap_of_a_child_retries_only_that_child(backend: Backend) -> None:
    parent, kind, _ = _spawned(backend, 2, max_attempts=3)
    (short,) = _claim_kind(backend, kind, 1, lease_s=SHORT_LEASE_S)
    (long_,) = _claim_kind(backend, kind, 1)
    time.sleep(SHORT_LEASE_S + 0.1)
    eventually(lambda: backend.reap() >= 1)
    child = backend.get(short.task.id)
    assert child is not None and child.status == TaskStatus.PENDING
    assert child.history[-1].outcome == "lease_expired"
    other = backend.get(long_.task.id)
    assert other is not None and other.status == TaskStatus.PROCESSING
    got = backend.get(parent.id)
    assert got is not None and got.waiting_for_children


def test_retried_parent_starts_over(backend: Backend) -> None:
    parent, _kind, _ = _spawned(backend, 2)
    backend.cancel(parent.id)
    out = backend.retry(parent.id)
    assert out.status == TaskStatus.PENDING and out.children == 0
    assert backend.children(parent.id) == []
    again = eventually(lambda: backend.claim("w3", [parent.kind], 1, LONG_LEASE_S))
    assert again[0].task.id == parent.id and again[0].task.children == 0


def _worker(worker_id: str) -> WorkerInfo:
    return WorkerInfo(id=worker_id)


def test_a_held_parent_counts_as_waiting_not_delayed(backend: Backend) -> None:
    """Queue counts and /metrics say a parent waits for its children, not for a retry
    back-off (it was counted ``delayed``: a split transcode showed a retry pending)."""
    _, kind, _ = _spawned(backend, 2)
    counts = backend.counts()
    assert (counts.pending, counts.delayed, counts.waiting_for_children) == (2, 0, 1)
    assert counts.by_status["pending"] == 3  # every pending task, whatever it waits for
    states = backend.metrics_snapshot().tasks[kind]
    assert states.get("waiting_for_children") == 1 and "delayed" not in states, states
    assert states.get("pending") == 2
