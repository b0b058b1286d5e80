"""GPU allocation with a declared inventory of 4 devices (no GPU on this machine).

The jobs are real local processes that print the devices they were given
(``CUDA_VISIBLE_DEVICES``) when they start and when they end; the stored log
timestamps then show that no device was ever held by two jobs at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from conveyor.models import Task, TaskStatus

from .conftest import Harness


def test_tasks_asking_1_2_and_4_gpus_never_share_a_device(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(container_runner="local", gpus="0,1,2,3", max_concurrent_tasks=4)
    script = 'echo "start $CUDA_VISIBLE_DEVICES"; sleep 0.4; echo "end $CUDA_VISIBLE_DEVICES"'
    wants = [1, 2, 4, 1, 2, 1, 4, 2, 1]
    tasks = [h.submit(command=["sh", "-c", script], gpus=n) for n in wants]
    h.worker()
    done = [h.wait(t.id, timeout=90) for t in tasks]
    assert [t.status for t in done] == [TaskStatus.COMPLETED] * len(wants), [t.error for t in done]
    # claimed only when its GPUs were free: no task ever waited for them on the worker
    assert [t.attempts for t in done] == [1] * len(wants)
    assert not any("Waiting for GPUs" in ln for t in tasks for ln in h.lines(t.id))

    spans: list[tuple[datetime, datetime, set[str]]] = []
    for t, n in zip(tasks, wants, strict=True):
        logs = h.service.logs(t.id, limit=1000)
        start = next(ln for ln in logs if ln.line.startswith("start "))
        end = next(ln for ln in logs if ln.line.startswith("end "))
        devices = set(start.line.split()[1].split(","))
        assert len(devices) == n and devices <= {"0", "1", "2", "3"}
        spans.append((start.ts, end.ts, devices))
    for i, (s1, e1, d1) in enumerate(spans):
        for s2, e2, d2 in spans[i + 1 :]:
            if s1 < e2 and s2 < e1:  # ran at the same time
                assert not d1 & d2, f"devices {d1 & d2} shared"
    # with 4 GPUs and 4 slots some jobs did overlap: the allocator did not serialise all
    assert any(
        s1 < e2 and s2 < e1 for i, (s1, e1, _) in enumerate(spans) for s2, e2, _ in spans[i + 1 :]
    )


def test_a_task_that_does_not_fit_now_stays_pending_and_says_why(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(container_runner="local", gpus="0,1", max_concurrent_tasks=2)
    h.worker()
    first = h.submit(command=["sh", "-c", "echo holding; sleep 3"], gpus=2)
    h.wait_log(first.id, "holding")
    second = h.submit(command=["sh", "-c", "echo ran"], gpus=1)
    # a slot is free but no GPU: the worker leaves it in the queue, and it says why
    why = wait_reason(h, second.id, "needs 1 GPU; largest free worker has 0")
    assert (why.status, why.attempts, why.history) == (TaskStatus.PENDING, 0, [])
    assert h.wait(first.id).status == TaskStatus.COMPLETED
    done = h.wait(second.id)
    assert done.status == TaskStatus.COMPLETED and done.attempts == 1
    assert not any("Waiting for GPUs" in line for line in h.lines(second.id))
    assert h.service.get(second.id, explain=True).waiting_reason is None


def test_a_task_needing_more_gpus_than_any_worker_has_waits_for_one_that_has(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(container_runner="local", gpus="0,1")
    t = h.submit(command=["true"], gpus=4, max_attempts=1)
    h.worker()
    why = wait_reason(h, t.id, "needs 4 GPUs; largest worker has 2")
    time.sleep(0.5)  # several claim loops of the 2-GPU worker
    assert (h.service.get(t.id).status, why.attempts) == (TaskStatus.PENDING, 0)
    big = h.worker(gpus="0,1,2,3")
    done = h.wait(t.id)
    assert (done.status, done.worker_id, done.attempts) == (TaskStatus.COMPLETED, big.id, 1)


def test_a_task_needing_2_gpus_is_never_claimed_by_a_worker_with_1(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(container_runner="local", gpus="0", max_concurrent_tasks=2)
    wants = [2, 1, 2, 1, 2, 1]
    tasks = [h.submit(command=["sh", "-c", "sleep 0.2"], gpus=n) for n in wants]
    one = h.worker()  # 1 GPU
    two = h.worker(gpus="0,1")
    done = [h.wait(t.id) for t in tasks]
    assert all(t.status == TaskStatus.COMPLETED and t.attempts == 1 for t in done)
    assert {t.worker_id for t, n in zip(done, wants, strict=True) if n == 2} == {two.id}
    assert one.id in {t.worker_id for t in done}  # the 1-GPU worker did take its share
    for t in done:
        assert not any("Waiting for GPUs" in line for line in h.lines(t.id))


def test_a_failed_claim_does_not_strand_the_tasks_claimed_before_it(
    harness_factory: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(container_runner="local", gpus="0,1", max_concurrent_tasks=2)
    tasks = [h.submit(command=["true"], gpus=1) for _ in range(2)]
    backend = h.service.backend
    real, calls = backend.claim, []

    def flaky(*args: Any, **kw: Any) -> Any:  # the database drops the second claim
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("database went away")
        return real(*args, **kw)

    monkeypatch.setattr(backend, "claim", flaky)
    h.worker()
    done = [h.wait(t.id, timeout=20) for t in tasks]
    # the first was started at once, not left to expire its lease and count an attempt
    assert [(t.status, t.attempts) for t in done] == [(TaskStatus.COMPLETED, 1)] * 2


def wait_reason(h: Harness, task_id: str, text: str, timeout: float = 10.0) -> Task:
    """The task once its ``waiting_reason`` (from the workers' heartbeats) reads ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        t = h.service.get(task_id, explain=True)
        if t.waiting_reason == text or time.monotonic() > deadline:
            assert t.waiting_reason == text, t
            return t
        time.sleep(0.05)
