"""Why a pending task waits: ``conveyor.service.waiting.why_waiting`` over reported workers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.console.i18n import LANGS, catalogue
from conveyor.models import Task, TaskStatus, WorkerInfo, utcnow
from conveyor.service.waiting import WaitReason, why_waiting


def worker(gpus: int = 0, in_use: int = 0, kinds: tuple[str, ...] = ("container",)) -> WorkerInfo:
    return WorkerInfo(id=f"w{gpus}-{in_use}", kinds=list(kinds), gpus=gpus, gpus_in_use=in_use)


def task(gpus: int = 0, **kw: object) -> Task:
    return Task(kind="container", gpus=gpus, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("needs", "workers", "text"),
    [
        (2, [], "no live worker runs container tasks"),
        (2, [worker(4, kinds=("transcode",))], "no live worker runs container tasks"),
        (1, [worker(0), worker(0)], "needs 1 GPU; no worker has GPUs"),
        (4, [worker(2), worker(1)], "needs 4 GPUs; largest worker has 2"),
        (2, [worker(4, 3), worker(2, 2)], "needs 2 GPUs; largest free worker has 1"),
        (1, [worker(2, 2)], "needs 1 GPU; largest free worker has 0"),
        (2, [worker(4, 3), worker(2, 0)], None),  # the second can take it now
        (0, [worker(0)], None),  # needs no GPU: next in line on any worker of its kind
        (0, [], "no live worker runs container tasks"),
    ],
)
def test_why_waiting(needs: int, workers: list[WorkerInfo], text: str | None) -> None:
    reason = why_waiting(task(needs), workers)
    assert (reason.text() if reason else None) == text


def test_only_a_pending_task_ready_to_run_waits_for_a_reason() -> None:
    for status in (TaskStatus.PROCESSING, TaskStatus.COMPLETED, TaskStatus.CANCELLED):
        assert why_waiting(task(2, status=status), []) is None
    in_backoff = task(2, not_before=utcnow() + timedelta(minutes=1))
    assert why_waiting(in_backoff, []) is None  # its retry time says why


def test_workers_from_before_the_gpu_fields_are_read_from_their_capabilities() -> None:
    old = WorkerInfo(id="old", kinds=["container"], capabilities={"container": {"gpus": ["0"]}})
    reason = why_waiting(task(2), [old])
    assert reason == WaitReason("too_few_gpus", "container", 2, 1)


def test_every_reason_has_console_text_in_both_languages() -> None:
    codes = {"no_worker", "no_gpus", "too_few_gpus", "gpus_busy"}
    for lang in LANGS:
        cat = catalogue(lang)
        assert "wait.no_worker" in cat
        for code in codes - {"no_worker"}:
            assert f"wait.{code}.one" in cat and f"wait.{code}.other" in cat, (lang, code)
