"""GPU allocation with a declared inventory of 4 devices (no GPU on this machine).

The jobs are real local processes that print the devices they were given
(``CUDA_VISIBLE_DEVICES``) when they start and when they end; the stored log
timestamps then show that no device was ever held by two jobs at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from conveyor.models import TaskStatus

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


def test_a_waiting_task_says_why(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(container_runner="local", gpus="0,1", max_concurrent_tasks=2)
    h.worker()
    first = h.submit(command=["sh", "-c", "echo holding; sleep 1.5"], gpus=2)
    h.wait_log(first.id, "holding")
    second = h.submit(command=["sh", "-c", "echo ran"], gpus=1)
    h.wait_log(second.id, "Waiting for GPUs: needs 1 GPU(s); 0 of 2 free on this worker")
    assert h.wait(first.id).status == TaskStatus.COMPLETED
    assert h.wait(second.id).status == TaskStatus.COMPLETED


def test_more_gpus_than_the_worker_has_fails_with_the_reason(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(container_runner="local", gpus="0,1")
    t = h.submit(command=["true"], gpus=4, max_attempts=1)
    h.worker()
    done = h.wait(t.id)
    assert (done.status, done.error_code) == (TaskStatus.FAILED, "gpus_unavailable")
    assert done.error == "needs 4 GPU(s); this worker has 2"
